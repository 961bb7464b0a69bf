"""vmadm of the SmartOS simulator against the command contract (research/smartos.md §2-§7)."""

from __future__ import annotations

import json
import uuid as uuidlib

import pytest

UNKNOWN = "3f0b3a0e-1111-4222-8333-444455556666"


# -- argument parsing, usage, exit codes ---------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["frobnicate"], ["get"], ["get", "not-a-uuid"],
                                  ["start", "1234"], ["stop"], ["delete", "x" * 36]])
def test_usage_errors_exit_2_with_usage_on_stderr(sim, args):
    proc = sim.run("vmadm", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Usage: /usr/sbin/vmadm" in proc.stderr


def test_invalid_uuid_message_names_the_command(sim):
    proc = sim.run("vmadm", "get", "abc")
    assert proc.stderr.startswith("Invalid or missing UUID for get\n")


def test_get_unknown_is_zoneadm_message_exit_1(sim):
    proc = sim.run("vmadm", "get", UNKNOWN)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"zoneadm: {UNKNOWN}: No such zone configured\n"


def test_aliases(zone_sim):
    uuid = zone_sim.create()
    assert json.loads(zone_sim.ok("vmadm", "json", uuid).stdout)["uuid"] == uuid
    assert "Successfully completed stop" in zone_sim.ok("vmadm", "halt", uuid).stderr
    assert "Successfully started" in zone_sim.ok("vmadm", "boot", uuid).stderr
    assert "Successfully deleted" in zone_sim.ok("vmadm", "destroy", uuid).stderr


# -- create: messages, validation, defaults ----------------------------------------------------

def test_create_message_on_stderr_nothing_on_stdout(zone_sim):
    proc = zone_sim.ok("vmadm", "create", stdin=json.dumps(
        {"brand": "joyent", "image_uuid": zone_sim.image}))
    assert proc.stdout == ""
    assert proc.stderr.startswith("Successfully created VM ")


def test_create_from_file(zone_sim, tmp_path):
    path = tmp_path / "payload.json"
    wanted = str(uuidlib.uuid4())
    path.write_text(json.dumps({"image_uuid": zone_sim.image, "uuid": wanted}))
    proc = zone_sim.ok("vmadm", "create", "-f", str(path))
    assert proc.stderr.strip() == f"Successfully created VM {wanted}"
    assert zone_sim.get(wanted)["brand"] == "joyent"


def test_create_defaults_of_an_os_zone(zone_sim):
    vm = zone_sim.get(zone_sim.create(max_physical_memory=512))
    assert vm["zonename"] == vm["uuid"]
    assert vm["zonepath"] == f"/zones/{vm['uuid']}"
    assert vm["zfs_filesystem"] == f"zones/{vm['uuid']}"
    assert (vm["state"], vm["zone_state"], vm["autoboot"]) == ("running", "running", True)
    assert vm["quota"] == 10 and vm["cpu_shares"] == 100 and vm["max_lwps"] == 2000
    assert vm["max_locked_memory"] == 512 and vm["max_swap"] == 512 and vm["tmpfs"] == 512
    assert vm["dns_domain"] == "local" and vm["limit_priv"] == "default"
    assert vm["owner_uuid"] == "00000000-0000-0000-0000-000000000000"
    assert vm["customer_metadata"] == {} and vm["internal_metadata"] == {}
    assert vm["nics"] == [] and vm["snapshots"] == [] and vm["hvm"] is False
    assert "ram" not in vm and "vcpus" not in vm
    assert vm["create_timestamp"].endswith("Z")
    for key in ("boot_timestamp", "pid", "zoneid"):
        assert key in vm


def test_os_ram_is_max_physical_memory_and_swap_at_least_256(zone_sim):
    vm = zone_sim.get(zone_sim.create(max_physical_memory=None, ram=128))
    assert vm["max_physical_memory"] == 128
    assert vm["max_swap"] == 256
    assert vm["max_locked_memory"] == 128


def test_memory_clamps(zone_sim):
    vm = zone_sim.get(zone_sim.create(max_physical_memory=512, max_locked_memory=4096,
                                      tmpfs=9999, max_swap=300))
    assert vm["max_locked_memory"] == 512 and vm["tmpfs"] == 512 and vm["max_swap"] == 512


def test_kvm_defaults_and_overhead(sim):
    proc = sim.ok("vmadm", "create", stdin=json.dumps({"brand": "kvm", "ram": 1024}))
    uuid = proc.stderr.strip().rsplit(" ", 1)[1]
    vm = sim.get(uuid)
    assert vm["max_physical_memory"] == 2048
    assert vm["vcpus"] == 1 and vm["hvm"] is True and vm["disks"] == []
    assert "tmpfs" not in vm and "dns_domain" not in vm
    assert vm["limit_priv"].startswith("default,-file_link_any")


def test_bhyve_overhead_and_quota(sim):
    uuid = sim.ok("vmadm", "create", stdin=json.dumps(
        {"brand": "bhyve", "ram": 512, "autoboot": False})).stderr.strip().rsplit(" ", 1)[1]
    vm = sim.get(uuid)
    assert vm["max_physical_memory"] == 512 + 1280
    assert vm["quota"] == 1
    assert vm["state"] == "stopped"


def test_missing_image_uuid_for_os_brand(sim):
    proc = sim.run("vmadm", "create", stdin=json.dumps({"brand": "joyent"}))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Missing required properties: image_uuid"


def test_image_not_installed_is_invalid_value(sim):
    proc = sim.run("vmadm", "create", stdin=json.dumps({"image_uuid": sim.image}))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Invalid value(s) for: image_uuid"
    assert sim.ok("vmadm", "list", "-H").stdout == ""


def test_image_of_wrong_type_is_invalid_value(zone_sim):
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps(
        {"brand": "lx", "image_uuid": zone_sim.image, "kernel_version": "4.4"}))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Invalid value(s) for: image_uuid"


def test_bad_values_are_listed(zone_sim):
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps(
        {"image_uuid": zone_sim.image, "quota": "lots", "autoboot": "maybe"}))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Invalid value(s) for: quota,autoboot"


def test_unknown_brand_is_invalid(sim):
    proc = sim.run("vmadm", "create", stdin=json.dumps({"brand": "vmware"}))
    assert (proc.returncode, proc.stderr.strip()) == (1, "Invalid value(s) for: brand")


def test_unknown_properties_are_warnings_not_errors(zone_sim):
    proc = zone_sim.ok("vmadm", "create", stdin=json.dumps(
        {"image_uuid": zone_sim.image, "frobs": 3, "vcpus": 2}))
    assert "Warning, invalid create property: [frobs] removing from payload." in proc.stderr
    assert "Warning, invalid create property: [vcpus] removing from payload." in proc.stderr
    uuid = proc.stderr.strip().splitlines()[-1].rsplit(" ", 1)[1]
    vm = zone_sim.get(uuid)
    assert "frobs" not in vm and "vcpus" not in vm


def test_duplicate_uuid_is_refused(zone_sim):
    uuid = zone_sim.create()
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps(
        {"image_uuid": zone_sim.image, "uuid": uuid}))
    assert (proc.returncode, proc.stderr.strip()) == (1, f"VM with UUID {uuid} already exists")


def test_bad_json_payload(sim):
    proc = sim.run("vmadm", "create", stdin="{not json")
    assert proc.returncode == 1 and proc.stderr.startswith("Invalid JSON payload")


def test_deprecated_dataset_uuid_is_image_uuid(zone_sim):
    proc = zone_sim.ok("vmadm", "create", stdin=json.dumps({"dataset_uuid": zone_sim.image}))
    uuid = proc.stderr.strip().rsplit(" ", 1)[1]
    assert zone_sim.get(uuid)["image_uuid"] == zone_sim.image


# -- nics ----------------------------------------------------------------------------------

def test_nics_are_normalised(zone_sim):
    vm = zone_sim.get(zone_sim.create(nics=[
        {"nic_tag": "admin", "ip": "10.0.0.5", "netmask": "255.255.255.0",
         "gateway": "10.0.0.1"},
        {"nic_tag": "external", "ips": ["dhcp"], "mac": "90:B8:D0:0A:0B:0C"}]))
    first, second = vm["nics"]
    assert first["ips"] == ["10.0.0.5/24"] and first["gateways"] == ["10.0.0.1"]
    assert first["ip"] == "10.0.0.5" and first["netmask"] == "255.255.255.0"
    assert first["primary"] is True and "primary" not in second
    assert first["interface"] == "net0" and second["interface"] == "net1"
    assert second["mac"] == "90:b8:d0:0a:0b:0c"
    assert first["mac"].count(":") == 5 and first["vlan_id"] == 0


@pytest.mark.parametrize("nic, message", [
    ({"ips": ["10.0.0.9/24"]}, "invalid or missing .nic_tag option for NIC: "),
    ({"nic_tag": "bad tag!"}, "invalid or missing .nic_tag option for NIC: "),
    ({"nic_tag": "admin", "ip": "10.0.0.9"}, "Missing .netmask option for NIC: "),
    ({"nic_tag": "admin", "ips": ["10.0.0.300/24"]}, "Invalid IP for NIC: "),
    ({"nic_tag": "admin", "ips": ["10.0.0.9/24"], "gateways": ["fe80::1"]},
     "Static gateways must be IPv4 addresses: fe80::1"),
    ({"nic_tag": "nosuchtag"}, 'Invalid nic tag "nosuchtag"'),
])
def test_nic_errors(zone_sim, nic, message):
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps(
        {"image_uuid": zone_sim.image, "nics": [nic]}))
    assert proc.returncode == 1
    assert proc.stderr.startswith(message), proc.stderr


def test_duplicate_ip_and_mac(zone_sim):
    same_ip = [{"nic_tag": "admin", "ips": ["10.0.0.7/24"]},
               {"nic_tag": "external", "ips": ["10.0.0.7/16"]}]
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps(
        {"image_uuid": zone_sim.image, "nics": same_ip}))
    assert proc.stderr.strip() == "Cannot add multiple NICs with the same IP: 10.0.0.7"
    mac = "90:b8:d0:01:02:03"
    same_mac = [{"nic_tag": "admin", "mac": mac}, {"nic_tag": "admin", "mac": mac}]
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps(
        {"image_uuid": zone_sim.image, "nics": same_mac}))
    assert proc.stderr.strip() == f"Cannot add multiple NICs with the same MAC: {mac}"


def test_hvm_nic_needs_a_model(sim):
    proc = sim.run("vmadm", "create", stdin=json.dumps(
        {"brand": "kvm", "nics": [{"nic_tag": "admin"}]}))
    assert proc.returncode == 1 and proc.stderr.startswith("missing .model option for NIC: ")
    sim.ok("vmadm", "create", stdin=json.dumps(
        {"brand": "kvm", "nic_driver": "virtio", "nics": [{"nic_tag": "admin"}]}))


# -- disks ---------------------------------------------------------------------------------

def test_kvm_disks(sim):
    proc = sim.ok("vmadm", "create", stdin=json.dumps(
        {"brand": "kvm", "disks": [{"size": 64, "model": "virtio", "boot": True}]}))
    uuid = proc.stderr.strip().rsplit(" ", 1)[1]
    disk = sim.get(uuid)["disks"][0]
    assert disk["zfs_filesystem"] == f"zones/{uuid}-disk0"
    assert disk["path"] == f"/dev/zvol/rdsk/zones/{uuid}-disk0"
    assert disk["size"] == 64 and disk["media"] == "disk" and disk["block_size"] == 8192
    assert f"zones/{uuid}-disk0" in sim.zfs_db()


@pytest.mark.parametrize("disk, message", [
    ({"size": 64}, "missing .model option for disk: "),
    ({"size": 64, "model": "ahci"}, '"ahci" is not a valid disk model for kvm brand. '
                                    "Valid are: virtio,scsi,ide"),
    ({"model": "virtio"}, "Missing required properties: disks.0.size"),
    ({"size": 64, "model": "virtio", "block_size": 1000},
     "invalid .block_size(1000), must be 512-131072 and a power of 2."),
    ({"size": 64, "model": "virtio", "path": "/dev/x"},
     "you cannot specify a path for a disk unless you set nocreate=true"),
    ({"image_uuid": UNKNOWN, "model": "virtio"}, "Invalid value(s) for: disks.0.image_uuid"),
])
def test_disk_errors(sim, disk, message):
    proc = sim.run("vmadm", "create", stdin=json.dumps({"brand": "kvm", "disks": [disk]}))
    assert proc.returncode == 1
    assert proc.stderr.startswith(message), proc.stderr


# -- the state machine ---------------------------------------------------------------------

def test_stop_start_reboot_and_the_exit_0_already_messages(zone_sim):
    uuid = zone_sim.create()
    first = zone_sim.get(uuid)
    proc = zone_sim.ok("vmadm", "start", uuid)
    assert proc.stderr.strip() == f"VM {uuid} is already 'running'"
    proc = zone_sim.ok("vmadm", "stop", uuid)
    assert proc.stderr.strip() == f"Successfully completed stop for VM {uuid}"
    stopped = zone_sim.get(uuid)
    assert (stopped["state"], stopped["zone_state"], stopped["autoboot"]) == \
        ("stopped", "installed", False)
    for key in ("boot_timestamp", "pid", "zoneid"):
        assert key not in stopped
    proc = zone_sim.ok("vmadm", "stop", uuid, "-F")
    assert proc.stderr.strip() == f"VM {uuid} is already not 'running' (currently: stopped)"
    proc = zone_sim.ok("vmadm", "reboot", uuid)
    assert proc.stderr.strip() == f"VM {uuid} is already not 'running' (currently: stopped)"
    assert zone_sim.ok("vmadm", "start", uuid).stderr.strip() == \
        f"Successfully started VM {uuid}"
    second = zone_sim.get(uuid)
    assert second["autoboot"] is True
    assert (second["zoneid"], second["pid"]) != (first["zoneid"], first["pid"])
    proc = zone_sim.ok("vmadm", "reboot", uuid)
    assert proc.stderr.strip() == f"Successfully completed reboot for VM {uuid}"
    assert zone_sim.get(uuid)["zoneid"] != second["zoneid"]


def test_stop_with_timeout_option(zone_sim):
    uuid = zone_sim.create()
    zone_sim.ok("vmadm", "stop", "-t", "5", uuid)
    assert zone_sim.get(uuid)["state"] == "stopped"


def test_autoboot_false_creates_stopped(zone_sim):
    vm = zone_sim.get(zone_sim.create(autoboot=False))
    assert vm["state"] == "stopped" and "pid" not in vm


def test_start_of_a_failed_vm_is_an_error(zone_sim):
    zone_sim.state.set_faults({"provision": "fail"})
    proc = zone_sim.run("vmadm", "create", stdin=json.dumps({"image_uuid": zone_sim.image}))
    assert proc.returncode == 1
    uuid = json.loads(zone_sim.ok("vmadm", "lookup", "-j", "state=failed").stdout)[0]["uuid"]
    proc = zone_sim.run("vmadm", "start", uuid)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Unable to start VM {uuid}: Cannot start vm from state "
                                   '"failed", must be "stopped".')


def test_delete(zone_sim):
    uuid = zone_sim.create()
    proc = zone_sim.ok("vmadm", "delete", uuid)
    assert proc.stderr.strip() == f"Successfully deleted VM {uuid}"
    assert not any(uuid in name for name in zone_sim.zfs_db())
    assert not (zone_sim.root / "zones" / uuid).exists()
    proc = zone_sim.run("vmadm", "delete", uuid)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Failed to delete VM {uuid}: ")


def test_indestructible_zoneroot_blocks_delete(zone_sim):
    uuid = zone_sim.create(indestructible_zoneroot=True)
    proc = zone_sim.run("vmadm", "delete", uuid)
    assert proc.returncode == 1
    assert "indestructible_zoneroot is set, cannot delete" in proc.stderr
    zone_sim.ok("vmadm", "update", uuid, "indestructible_zoneroot=false")
    zone_sim.ok("vmadm", "delete", uuid)
