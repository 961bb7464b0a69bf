"""Overhead of the SmartOS driver against the raw commands, on the test bed's simulator.

In one run, interleaved round by round so that drift hits every way alike:

  raw    the minimal command sequence: `vmadm create` (the payload on stdin), `vmadm delete`
  same   the raw commands that make the driver's check too: create, `vmadm get` (is the VM
         virtkit's? destroy never touches another's), delete
  local  SmartOSDriver.spawn + destroy with the local executor
  ssh    the same through the SSH executor (the test bed's sshd, one kept connection)

Then the commands the driver issues per operation (read from the simulator's command log)
against the minimum a hand-written sequence needs.

usage: bench/smartos_overhead.py [--count 20]     (after `scripts/testbed up ssh smartos`)
The last line holds the ratios (goals: local/raw <= 1.2, ssh/local <= 1.3). Every simulated
command costs about the same (a Python start), so local/raw is close to the ratio of command
counts; on a real global zone `vmadm create` takes seconds and `zfs list`/`vmadm get` tens of
milliseconds. local/same is the driver's own overhead over the same commands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from virt.config import build_conf  # noqa: E402
from virt.driver import load_driver  # noqa: E402
from virt.model import Flavor, ImageRef, Instance  # noqa: E402

FLAVOR = Flavor("bench", 1, 128, 1)
#: The fewest commands each operation needs when written by hand (the image present).
MINIMUM = {"spawn": 1, "destroy": 1, "reboot": 1, "power_off": 1, "power_on": 1,
           "get_info": 1, "list_instances": 1}


def testbed_env() -> dict[str, str]:
    env = dict(os.environ)
    path = REPO / ".testbed" / "env"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                name, _, value = line[len("export "):].partition("=")
                env.setdefault(name, subprocess.run(["sh", "-c", f"printf %s {value}"],
                                                    capture_output=True, text=True).stdout)
    missing = [n for n in ("VIRTKIT_TEST_SMARTOS_BIN", "VIRTKIT_TEST_SMARTOS_SSH",
                           "VIRTKIT_TEST_SMARTOS_IMAGE") if not env.get(n)]
    if missing:
        sys.exit(f"smartos_overhead: {', '.join(missing)} unset: run scripts/testbed up")
    return env


def make_driver(env: dict[str, str], state: Path, *, ssh: bool):
    conf_file = state / f"virtkit-{'ssh' if ssh else 'local'}.conf"
    lines = ["[DEFAULT]", f"state_path = {state}", "host = bench-smartos", "[smartos]",
             f"bin_dir = {env['VIRTKIT_TEST_SMARTOS_BIN']}",
             f"image_dir = {env['VIRTKIT_TEST_SMARTOS_IMAGE_DIR']}"]
    if ssh:
        lines += [f"host = {env['VIRTKIT_TEST_SMARTOS_SSH']}",
                  f"ssh_key_file = {env['VIRTKIT_TEST_SMARTOS_SSH_KEY']}",
                  f"known_hosts_file = {env['VIRTKIT_TEST_SMARTOS_KNOWN_HOSTS']}"]
    conf_file.write_text("\n".join(lines) + "\n")
    driver = load_driver("smartos", build_conf(str(conf_file)))
    driver.init_host(host="bench-smartos")
    return driver


def new_instance(image: str) -> Instance:
    return Instance(uuid=str(uuid.uuid4()), name=f"vk-bench-{uuid.uuid4().hex[:8]}",
                    flavor=FLAVOR, image=ImageRef(image))


def raw_cycle(bin_dir: str, image: str, *, checks: bool = False) -> None:
    vm = str(uuid.uuid4())
    payload = {"uuid": vm, "brand": "joyent", "image_uuid": image, "alias": "vk-bench-raw",
               "max_physical_memory": FLAVOR.memory_mb, "quota": FLAVOR.root_gb,
               "internal_metadata": {"virtkit:managed": "true", "virtkit:host": "bench-raw"}}
    subprocess.run([f"{bin_dir}/vmadm", "create"], input=json.dumps(payload), text=True,
                   capture_output=True, check=True)
    if checks:
        subprocess.run([f"{bin_dir}/vmadm", "get", vm], capture_output=True, check=True)
    subprocess.run([f"{bin_dir}/vmadm", "delete", vm], capture_output=True, check=True)


def timed(cycle: Callable[[], None]) -> float:
    start = time.perf_counter()
    cycle()
    return time.perf_counter() - start


def commands_per_operation(driver, image: str, log: Path) -> dict[str, int]:
    """How many tool commands each driver operation issues (the simulator logs each one)."""
    def count(call: Callable[[], object]) -> int:
        before = len(log.read_text().splitlines())
        call()
        return len(log.read_text().splitlines()) - before

    instance = new_instance(image)
    counts = {"spawn": count(lambda: driver.spawn(instance=instance))}
    counts["get_info"] = count(lambda: driver.get_info(instance=instance))
    counts["list_instances"] = count(driver.list_instances)
    counts["reboot"] = count(lambda: driver.reboot(instance=instance))
    counts["power_off"] = count(lambda: driver.power_off(instance=instance, timeout=5))
    counts["power_on"] = count(lambda: driver.power_on(instance=instance))
    counts["destroy"] = count(lambda: driver.destroy(instance=instance))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    env = testbed_env()
    image, bin_dir = env["VIRTKIT_TEST_SMARTOS_IMAGE"], env["VIRTKIT_TEST_SMARTOS_BIN"]
    log = Path(env["VIRTKIT_TEST_SMARTOS_ROOT"]) / "log"
    with tempfile.TemporaryDirectory(prefix="vk-bench-smartos-") as tmp:
        local = make_driver(env, Path(tmp), ssh=False)
        remote = make_driver(env, Path(tmp), ssh=True)
        ways = {"raw": lambda: raw_cycle(bin_dir, image),
                "same": lambda: raw_cycle(bin_dir, image, checks=True),
                "local": lambda: cycle(local), "ssh": lambda: cycle(remote)}

        def cycle(driver) -> None:
            instance = new_instance(image)
            driver.spawn(instance=instance)
            driver.destroy(instance=instance)

        for way in ways.values():  # warm-up: the image installed, the ssh connection made
            way()
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.count):
            for name, way in ways.items():
                times[name].append(timed(way))
        counts = commands_per_operation(local, image, log)
        local.cleanup_host(host="bench-smartos")
        remote.cleanup_host(host="bench-smartos")
    mean = {name: sum(t) / len(t) for name, t in times.items()}
    for name in ways:
        print(f"{name:6s} spawn+destroy: {mean[name] * 1000:8.1f} ms (mean of {args.count})")
    print("commands per operation (driver / minimum):")
    for op, n in counts.items():
        print(f"  {op:15s} {n} / {MINIMUM[op]}")
    print(f"ratios: local/raw {mean['local'] / mean['raw']:.2f} (goal <= 1.2), "
          f"local/same {mean['local'] / mean['same']:.2f}, "
          f"ssh/local {mean['ssh'] / mean['local']:.2f} (goal <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
