"""imgadm, zfs, zpool, sysinfo, zlogin and the injected faults of the SmartOS simulator."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.smartos_sim import guest

# -- imgadm --------------------------------------------------------------------------------

def test_imgadm_get_not_installed_exits_3(sim):
    proc = sim.run("imgadm", "get", sim.image)
    assert proc.returncode == 3
    assert proc.stderr.strip() == (f'imgadm: error (ImageNotInstalled): image "{sim.image}" '
                                   'was not found on zpool "zones"')


def test_imgadm_install_get_list_and_skip(sim):
    proc = sim.ok("imgadm", "install", "-m", str(sim.image_dir / f"{sim.image}.json"),
                  "-f", str(sim.image_dir / f"{sim.image}.zfs.gz"))
    assert f"Installed image {sim.image} (virtkit-test-zone@1.0.0)" in proc.stdout
    got = json.loads(sim.ok("imgadm", "get", sim.image).stdout)
    assert got["manifest"]["uuid"] == sim.image and got["zpool"] == "zones"
    listed = json.loads(sim.ok("imgadm", "list", "-j").stdout)
    assert [i["manifest"]["uuid"] for i in listed] == [sim.image]
    assert listed[0]["clones"] == 0 and listed[0]["cloneNames"] == []
    table = sim.ok("imgadm", "list").stdout.splitlines()
    assert table[0].split() == ["UUID", "NAME", "VERSION", "OS", "TYPE", "PUB"]
    assert table[1].split() == [sim.image, "virtkit-test-zone", "1.0.0", "smartos",
                                "zone-dataset", "2024-01-01"]
    db = sim.zfs_db()
    assert f"zones/{sim.image}" in db and f"zones/{sim.image}@final" in db
    again = sim.ok("imgadm", "install", "-m", str(sim.image_dir / f"{sim.image}.json"),
                   "-f", str(sim.image_dir / f"{sim.image}.zfs.gz"))
    assert "is already installed, skipping" in again.stdout


def test_imgadm_import_from_a_local_source_dir(sim):
    proc = sim.ok("imgadm", "import", "-S", f"file://{sim.image_dir}", sim.image)
    assert f"Imported image {sim.image}" in proc.stdout
    proc = sim.run("imgadm", "import", "-S", str(sim.image_dir),
                   "3f0b3a0e-1111-4222-8333-444455556666")
    assert proc.returncode == 1 and "ActiveImageNotFound" in proc.stderr


def test_imgadm_install_checks_the_file(sim, tmp_path):
    bad = tmp_path / "bad.zfs.gz"
    bad.write_bytes(b"garbage")
    proc = sim.run("imgadm", "install", "-m", str(sim.image_dir / f"{sim.image}.json"),
                   "-f", str(bad))
    assert proc.returncode == 1 and proc.stderr.startswith("imgadm: error (")
    assert sim.run("imgadm", "get", sim.image).returncode == 3


def test_imgadm_delete_refused_while_clones_exist(zone_sim):
    uuid = zone_sim.create()
    info = json.loads(zone_sim.ok("imgadm", "get", zone_sim.image).stdout)
    assert "children" not in info
    listed = json.loads(zone_sim.ok("imgadm", "list", "-j").stdout)[0]
    assert listed["cloneNames"] == [f"zones/{uuid}"] and listed["clones"] == 1
    proc = zone_sim.run("imgadm", "delete", zone_sim.image)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"imgadm: error (ImageHasDependentClones): image "
                                   f'"{zone_sim.image}" has dependent clones: zones/{uuid}')
    zone_sim.ok("vmadm", "delete", uuid)
    assert zone_sim.ok("imgadm", "delete", zone_sim.image).stdout.strip() == \
        f"Deleted image {zone_sim.image}"
    assert zone_sim.run("imgadm", "get", zone_sim.image).returncode == 3


def test_imgadm_usage(sim):
    assert sim.run("imgadm", "get", "nope").returncode == 2
    assert sim.run("imgadm", "frob").returncode == 2


# -- zfs: clones, snapshots, send, space -----------------------------------------------------

def test_zone_root_is_a_clone_of_the_image_final_snapshot(zone_sim):
    uuid = zone_sim.create()
    origin = zone_sim.ok("zfs", "get", "-Hp", "-o", "value", "origin", f"zones/{uuid}").stdout
    assert origin.strip() == f"zones/{zone_sim.image}@final"
    root = zone_sim.root / "zones" / uuid / "root"
    assert (root / "etc" / "virtkit-test-image").read_text().strip() == zone_sim.image
    used = int(zone_sim.ok("zfs", "get", "-Hp", "-o", "value", "used",
                           f"zones/{uuid}").stdout)
    refer = int(zone_sim.ok("zfs", "get", "-Hp", "-o", "value", "referenced",
                            f"zones/{uuid}").stdout)
    assert used == 0 < refer  # copy-on-write: a fresh clone holds nothing of its own
    zone_sim.ok("zlogin", uuid, "/usr/bin/tee", "/root/new", stdin="x" * 1000)
    used = int(zone_sim.ok("zfs", "get", "-Hp", "-o", "value", "used",
                           f"zones/{uuid}").stdout)
    assert used == 1000
    image_file = zone_sim.root / "zones" / zone_sim.image / "root" / "etc" / "shadow"
    zone_sim.ok("zlogin", uuid, "/usr/sbin/chpasswd", stdin="root:pw\n")
    assert "pbkdf2" not in image_file.read_text()  # the image's copy is not written through


def test_zfs_list_formats(zone_sim):
    uuid = zone_sim.create()
    rows = zone_sim.ok("zfs", "list", "-H", "-p", "-o", "name,used,avail,refer,origin",
                       "-t", "filesystem,volume,snapshot").stdout.splitlines()
    cells = {r.split("\t")[0]: r.split("\t") for r in rows}
    assert cells[f"zones/{uuid}"][4] == f"zones/{zone_sim.image}@final"
    assert cells[f"zones/{zone_sim.image}@final"][2] == "-"
    assert all(c[1].isdigit() for c in cells.values())
    plain = zone_sim.ok("zfs", "list").stdout.splitlines()
    assert plain[0].split() == ["NAME", "USED", "AVAIL", "REFER", "MOUNTPOINT"]
    assert not any("@" in line for line in plain)
    proc = zone_sim.run("zfs", "list", "zones/nope")
    assert (proc.returncode, proc.stderr.strip()) == \
        (1, "cannot open 'zones/nope': dataset does not exist")


def test_zfs_snapshot_clone_send_destroy(zone_sim, tmp_path):
    uuid = zone_sim.create()
    zone_sim.ok("zfs", "snapshot", f"zones/{uuid}@cap")
    proc = zone_sim.run("zfs", "snapshot", f"zones/{uuid}@cap")
    assert proc.returncode == 1 and "dataset already exists" in proc.stderr
    stream = subprocess.run([str(zone_sim.bin / "zfs"), "send", f"zones/{uuid}@cap"],
                            capture_output=True, check=True).stdout
    assert stream.startswith(b"SIMZFS")
    manifest = json.loads((zone_sim.image_dir / f"{zone_sim.image}.json").read_text())
    new = "0b1f0d3c-2222-4333-8444-555566667777"
    manifest.update(uuid=new, name="captured")
    manifest["files"] = [{"size": len(stream), "compression": "none"}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    (tmp_path / "f.zfs").write_bytes(stream)
    zone_sim.ok("imgadm", "install", "-m", str(tmp_path / "m.json"), "-f", str(tmp_path / "f.zfs"))
    second = zone_sim.create(image_uuid=new)
    root = zone_sim.root / "zones" / second / "root"
    assert (root / "etc" / "virtkit-test-image").exists()
    proc = zone_sim.run("zfs", "destroy", f"zones/{uuid}")
    assert proc.returncode == 1 and "has children" in proc.stderr
    zone_sim.ok("zfs", "clone", f"zones/{uuid}@cap", "zones/copy")
    proc = zone_sim.run("zfs", "destroy", f"zones/{uuid}@cap")
    assert proc.returncode == 1 and "snapshot has dependent clones" in proc.stderr
    zone_sim.ok("zfs", "destroy", "zones/copy")
    zone_sim.ok("zfs", "destroy", f"zones/{uuid}@cap")


def test_zfs_send_refuses_a_terminal_and_bad_usage(sim):
    assert sim.run("zfs").returncode == 2
    assert sim.run("zfs", "frob").returncode == 2


def test_zpool_list(zone_sim):
    out = zone_sim.ok("zpool", "list", "-Hp", "-o", "name,size,allocated,free", "zones").stdout
    name, size, alloc, free = out.strip().split("\t")
    assert name == "zones" and int(size) == int(alloc) + int(free) and int(alloc) > 0
    assert zone_sim.run("zpool", "list", "tank").returncode == 1


def test_sysinfo(sim):
    info = json.loads(sim.ok("sysinfo").stdout)
    for key in ("UUID", "Hostname", "Live Image", "CPU Total Cores", "MiB of Memory", "Zpool",
                "Zpool Size in GiB", "VM Capable", "Bhyve Capable", "Network Interfaces",
                "Datacenter Name", "Boot Time"):
        assert key in info
    tags = {t for nic in info["Network Interfaces"].values() for t in nic["NIC Names"]}
    assert tags == {"admin", "external"}


# -- zlogin and the guest --------------------------------------------------------------------

def test_zlogin_guest_commands(zone_sim):
    uuid = zone_sim.create()
    assert zone_sim.ok("zlogin", "-Q", uuid, "/usr/bin/mkdir", "-p", "/a/b").stdout == ""
    proc = zone_sim.ok("zlogin", uuid, "/usr/bin/tee", "/a/b/f", stdin="data\n")
    assert proc.stdout == "data\n"
    assert zone_sim.ok("zlogin", uuid, "/usr/bin/cat", "/a/b/f").stdout == "data\n"
    proc = zone_sim.run("zlogin", uuid, "/usr/bin/cat", "/nope")
    assert proc.returncode == 1 and "No such file" in proc.stderr
    proc = zone_sim.run("zlogin", uuid, "/usr/bin/rm", "-rf", "/")
    assert (proc.returncode, proc.stderr.strip()) == (127, "/usr/bin/rm: not found")
    proc = zone_sim.run("zlogin", uuid, "/usr/bin/cat", "/../../../etc/passwd")
    assert proc.returncode != 0


def test_chpasswd_stores_a_salted_hash_and_never_logs_the_password(zone_sim):
    uuid = zone_sim.create()
    secret = "Sup3r-s3cret-pw"
    proc = zone_sim.ok("zlogin", uuid, "/usr/sbin/chpasswd", stdin=f"root:{secret}\n")
    assert secret not in proc.stdout + proc.stderr
    root = zone_sim.root / "zones" / uuid / "root"
    assert guest.password_matches(root, "root", secret)
    assert not guest.password_matches(root, "root", "other")
    shadow = (root / "etc" / "shadow").read_text()
    assert secret not in shadow
    for path in zone_sim.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    proc = zone_sim.run("zlogin", uuid, "/usr/sbin/chpasswd", stdin="nobody:x\n")
    assert proc.returncode == 1 and "unknown user" in proc.stderr


def test_zlogin_only_into_running_zones(zone_sim):
    uuid = zone_sim.create()
    zone_sim.ok("vmadm", "stop", uuid)
    proc = zone_sim.run("zlogin", uuid, "/usr/bin/cat", "/etc/passwd")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"zlogin: login allowed only to running zones ({uuid} is "
                                   "'installed').")


# -- faults ----------------------------------------------------------------------------------

def test_provision_fault_leaves_a_failed_vm(zone_sim):
    zone_sim.state.set_faults({"provision": "fail"})
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps({"image_uuid": zone_sim.image}))
    assert proc.returncode == 1 and "provisioning failed" in proc.stderr
    uuid = zone_sim.ok("vmadm", "lookup", "state=failed").stdout.strip()
    vm = zone_sim.get(uuid)
    assert vm["state"] == "failed" and "pid" not in vm
    assert zone_sim.ok("vmadm", "stop", uuid).stderr.strip() == \
        f"VM {uuid} is already not 'running' (currently: failed)"
    zone_sim.ok("vmadm", "delete", uuid)
    zone_sim.create()  # one-shot: the next create provisions


def test_zfs_fault(zone_sim):
    zone_sim.state.set_faults({"zfs": {"snapshot": "cannot create snapshot: out of space"}})
    proc = zone_sim.run("zfs", "snapshot", f"zones/{zone_sim.image}@x")
    assert (proc.returncode, proc.stderr.strip()) == (1, "cannot create snapshot: out of space")
    assert zone_sim.run("zfs", "list").returncode == 0
    zone_sim.state.set_faults({"zfs": "pool I/O is currently suspended"})
    assert zone_sim.run("zfs", "list").returncode == 1


def test_fail_fault_for_any_command(zone_sim):
    zone_sim.state.set_faults({"fail": {"vmadm start": "Unable to start VM: boom"}})
    assert zone_sim.run("vmadm", "start", zone_sim.create()).stderr.strip() == \
        "Unable to start VM: boom"


def test_hang_fault_blocks_until_removed(zone_sim):
    uuid = zone_sim.create()
    zone_sim.state.set_faults({"hang": "vmadm stop"})
    with pytest.raises(subprocess.TimeoutExpired):
        zone_sim.run("vmadm", "stop", uuid, timeout=1.5)
    assert zone_sim.ok("vmadm", "list", "-pH", "-o", "state").stdout.strip() == "running"
    hung = subprocess.Popen([str(zone_sim.bin / "vmadm"), "stop", uuid],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert hung.poll() is None
    zone_sim.state.set_faults({})
    assert hung.wait(timeout=10) == 1
    hung.communicate()
    zone_sim.ok("vmadm", "stop", uuid)
