"""The simulator's wrappers and the test image: any cwd, no environment, over ssh."""

from __future__ import annotations

import json
import os
import subprocess

from tests import testbed
from tests.smartos_sim import install, mkimage


def test_wrappers_run_with_an_empty_environment_from_any_cwd(sim, tmp_path):
    proc = subprocess.run(["env", "-i", str(sim.bin / "vmadm"), "list", "-p"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    proc = subprocess.run(["env", "-i", str(sim.bin / "sysinfo")], cwd="/",
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["Zpool"] == "zones"


def test_install_is_idempotent_and_records_the_state_root(sim):
    before = {p.name: p.read_text() for p in sim.bin.iterdir()}
    install.install(sim.bin, sim.root)
    assert {p.name: p.read_text() for p in sim.bin.iterdir()} == before
    assert sorted(before) == sorted(["vmadm", "imgadm", "zfs", "zpool", "sysinfo", "zlogin"])
    assert install.state_root_of(sim.bin) == sim.root.resolve()
    assert all(os.access(sim.bin / name, os.X_OK) for name in before)


def test_mkimage_is_cached_and_its_manifest_matches_the_file(image_dir):
    path, uuid = image_dir
    stamp = (path / f"{uuid}.zfs.gz").stat().st_mtime_ns
    assert mkimage.build(path) == uuid
    assert (path / f"{uuid}.zfs.gz").stat().st_mtime_ns == stamp
    manifest = json.loads((path / f"{uuid}.json").read_text())
    assert manifest["type"] == "zone-dataset" and manifest["v"] == 2
    assert manifest["files"][0]["size"] == (path / f"{uuid}.zfs.gz").stat().st_size


def test_zfs_list_depth(zone_sim):
    uuid = zone_sim.create()
    zone_sim.ok("zfs", "snapshot", f"zones/{uuid}@s")
    names = zone_sim.ok("zfs", "list", "-H", "-o", "name", "-d", "1", "-t",
                        "filesystem,volume", "zones").stdout.split()
    assert names == ["zones", *sorted([f"zones/{uuid}", f"zones/{zone_sim.image}"])]
    snaps = zone_sim.ok("zfs", "list", "-H", "-o", "name", "-d", "1", "-t", "snapshot",
                        f"zones/{uuid}").stdout.split()
    assert snaps == [f"zones/{uuid}@s"]


def test_the_test_beds_simulator_over_ssh():
    bin_dir = testbed.env("VIRTKIT_TEST_SMARTOS_BIN")
    url = testbed.env("VIRTKIT_TEST_SMARTOS_SSH")
    key = testbed.env("VIRTKIT_TEST_SMARTOS_SSH_KEY")
    known = testbed.env("VIRTKIT_TEST_SMARTOS_KNOWN_HOSTS")
    hostport = url.removeprefix("ssh://").partition("@")[2]
    host, _, port = hostport.partition(":")
    proc = subprocess.run(
        ["ssh", "-F", "none", "-o", f"UserKnownHostsFile={known}", "-o",
         "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-i", key, "-p", port or "22",
         f"root@{host}", f"{bin_dir}/sysinfo"], capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Zpool"] == "zones"
