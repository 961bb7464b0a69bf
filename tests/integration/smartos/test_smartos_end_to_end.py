"""`virtkit` and `virtkit-recover` on `compute_driver = smartos`, end to end.

The commands run as an operator runs them (the console scripts, a config file) against the
module's private SmartOS simulator (conftest's `sim`), locally and over the test bed's sshd
as a global zone. What they did is checked with the simulator's own tools, not through
virtkit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.smartos.conftest import ssh_settings

BIN = Path(sys.executable).parent
VIRTKIT = [str(BIN / "virtkit")]
RECOVER = [str(BIN / "virtkit-recover")]


def vmadm(sim, *args: str) -> str:
    return subprocess.run([str(sim.bin / "vmadm"), *args], capture_output=True, text=True,
                          check=True).stdout


def zones(sim) -> dict[str, str]:
    """alias -> state of every zone the simulator holds."""
    rows = vmadm(sim, "list", "-p", "-H", "-o", "state,alias").splitlines()
    return {alias: state for state, _, alias in (r.partition(":") for r in rows if r)}


def write_config(path: Path, sim, *, host: str, state: Path, ssh: bool,
                 store: str | None = None) -> Path:
    lines = ["[DEFAULT]", "compute_driver = smartos", f"host = {host}",
             f"state_path = {state}"]
    if store:
        lines.append(f"state_connection = {store}")
    lines += ["[smartos]", f"bin_dir = {sim.bin}", f"image_dir = {sim.images}",
              "poll_interval = 0.2"]
    if ssh:
        lines += [f"{key} = {value}" for key, value in ssh_settings().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(config: Path, *args: str, command=VIRTKIT) -> dict | list:
    done = subprocess.run([*command, "--config", str(config), "--format", "json", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else {}


@pytest.mark.parametrize("executor", ["local", "ssh"])
def test_lifecycle_through_the_cli(sim, tmp_path, executor):
    config = write_config(tmp_path / "virtkit.conf", sim, host=f"e2e-{executor}",
                          state=tmp_path / "state", ssh=executor == "ssh")
    web = f"web-{executor}"
    booted = cli(config, "boot", "--image", sim.image, "--vcpus", "1", "--memory-mb", "256", "--disk-gb", "2", web)
    assert booted["vm_state"] == "active" and zones(sim)[web] == "running"
    zone = json.loads(vmadm(sim, "get", booted["uuid"]))
    assert zone["max_physical_memory"] == 256 and zone["image_uuid"] == sim.image
    assert zone["internal_metadata"]["virtkit:managed"] == "true"

    listed = cli(config, "list")
    assert [(r["name"], r["power_state"]) for r in listed] == [(web, "running")]
    shown = cli(config, "show", web)
    assert shown["uuid"] == booted["uuid"] and shown["power_state"] == "running"

    cli(config, "stop", web)
    assert zones(sim)[web] == "stopped"
    cli(config, "start", web)
    assert zones(sim)[web] == "running"

    snap = cli(config, "snapshot", web, f"snap-{executor}")
    image_ref = snap["image"]["ref"] if "image" in snap else snap["ref"]
    copy = f"copy-{executor}"
    cli(config, "boot", "--image", image_ref, "--vcpus", "1", "--memory-mb", "128", copy)
    assert zones(sim)[copy] == "running"
    origin = json.loads(vmadm(sim, "get", cli(config, "show", copy)["uuid"]))["image_uuid"]
    assert origin == image_ref != sim.image  # booted from the snapshot, not the original

    for name in (web, copy):
        cli(config, "delete", name)
    assert web not in zones(sim) and copy not in zones(sim)
    assert cli(config, "list") == []


def test_recover_a_failed_hosts_instances_onto_a_smartos_host(sim, tmp_path):
    """Host A (the fake driver) fails; virtkit-recover re-spawns its instances on host B, a
    SmartOS global zone, from their images."""
    store = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    host_a = tmp_path / "a.conf"
    host_a.write_text(f"[DEFAULT]\ncompute_driver = fake\nhost = host-a\n"
                      f"state_path = {tmp_path / 'a'}\nstate_connection = {store}\n")
    host_b = write_config(tmp_path / "b.conf", sim, host="host-b", state=tmp_path / "b",
                          ssh=True, store=store)
    names = ["db-0", "db-1"]
    for name in names:
        cli(host_a, "boot", "--image", sim.image, "--vcpus", "1", "--memory-mb", "128", name)
    cli(host_a, "stop", "db-1")

    report = cli(host_b, "--failed-host", "host-a", "--confirm-fenced", command=RECOVER)
    outcomes = {i["name"]: i["outcome"] for i in report["instances"]}
    assert outcomes == {"db-0": "recovered", "db-1": "recovered"}
    assert zones(sim)["db-0"] == "running"
    assert zones(sim)["db-1"] == "stopped"  # recovered as it was: shut down
    listed = {r["name"]: r for r in cli(host_b, "list")}
    assert set(listed) == set(names) and all(r["host"] == "host-b" for r in listed.values())
    for name in names:
        cli(host_b, "delete", name)
    assert not set(names) & set(zones(sim))
