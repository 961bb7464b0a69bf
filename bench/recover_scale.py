"""Recovery at scale: 200 instances with 2 volumes each.

1. Fake driver with 50 ms per spawn and 20 ms per volume attach (the engine's and the SAN's
   waits): wall time with --parallel 8 vs --parallel 1 (goal >= 5x), and virtkit's own
   overhead per instance = (wall at --parallel 1 - simulated waits) / instances (goal <= 5 ms),
   split into the fake driver's own work (time inside its calls beyond the waits: the state
   files a real engine would keep in its own process; on tmpfs, and once more on the disk)
   and the recovery engine's (claims, journal and store: the store always on the disk).
   For comparison, the same run with zero waits (the work back to back, on a hot CPU).
   Also the CPU time the process used per instance (all threads): the same work, less
   sensitive to other load on the machine than wall time.
2. The same 200 on libvirt test:///default (no volumes: the test driver has no iSCSI).

    .venv/bin/python bench/recover_scale.py [--instances N]

The last line is the parallel speed-up ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.recovery_helpers import record_instances
from virt.config import build_conf
from virt.driver import load_driver
from virt.model import ImageRef
from virt.recovery.engine import Recoverer
from virt.recovery.journal import RecoveryJournal
from virt.recovery.options import RecoveryOptions, register_opts
from virt.recovery.sources import StoreSource
from virt.store import Store

SPAWN_MS, VOLUME_MS, VOLUMES = 50, 20, 2
SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Run(NamedTuple):
    wall: float  # seconds
    commits: int  # store transactions the recovery committed
    cpu: float  # CPU seconds the process used meanwhile (all threads)
    in_driver: float  # seconds spent inside driver calls (waits included)


DRIVER_CALLS = ("spawn", "attach_volume", "detach_volume", "destroy", "power_on",
                "instance_exists", "get_info")


def time_driver_calls(driver: object, spent: list[float]) -> None:
    """Add the time of each driver call to spent[0] (serial runs only: not thread-safe)."""
    for name in DRIVER_CALLS:
        method = getattr(driver, name)

        def timed(*args: object, _method=method, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started

        setattr(driver, name, timed)


def run(workdir: Path, driver_name: str, count: int, parallel: int, *, volumes: int,
        image: ImageRef | None = None, label: str = "", hypervisor_dir: Path | None = None,
        **driver_opts: object) -> Run:
    """Record `count` instances on host-a, recover them as host-b. The store is always in
    `workdir`; `hypervisor_dir` holds the instance files (the fake hypervisor's state)."""
    state = workdir / f"{driver_name}-p{parallel}{label}"
    overrides = {"state_path": str(state), "compute_driver": driver_name}
    if hypervisor_dir is not None:
        overrides["instances_path"] = str(hypervisor_dir / f"p{parallel}{label}")
    conf = build_conf(overrides=overrides)
    register_opts(conf)
    driver = load_driver(driver_name, conf)
    for key, value in driver_opts.items():
        group, name = key.split("__")
        conf.set_override(name, value, group=group)
    driver = load_driver(driver_name, conf)  # again: options are read at construction
    driver.init_host(host="host-b")
    in_driver = [0.0]
    if parallel == 1:
        time_driver_calls(driver, in_driver)
    with Store(conf.state_connection) as store:
        record_instances(store, "host-a", count, volumes=volumes, image=image,
                         prefix=f"p{parallel}")
        recoverer = Recoverer(
            driver=driver, source=StoreSource(store), journal=RecoveryJournal(store, host="host-b"),
            host="host-b", options=RecoveryOptions(
                failed_host="host-a", confirm_fenced=True, parallel=parallel,
                volume_check="none"))
        commits: list[int] = []
        sa.event.listen(store.engine, "commit", lambda _conn: commits.append(1))
        started, cpu_started = time.perf_counter(), time.process_time()
        report = recoverer.run()
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    bad = [i for i in report.instances if i.outcome != "recovered"]
    if bad:
        raise SystemExit(f"{len(bad)} instance(s) not recovered: {bad[0].error}")
    return Run(wall, len(commits), cpu, in_driver[0])


def slept_ms(ms: int, samples: int = 40) -> float:
    """How long `time.sleep(ms)` really takes here (median): the simulated waits as slept.

    The OS wakes a sleeper a little late (timer slack, ~0.1 ms); that time belongs to the
    simulated engine's wait, not to virtkit.
    """
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        time.sleep(ms / 1000.0)
        durations.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=200)
    args = parser.parse_args()
    n = args.instances
    workdir = Path(tempfile.mkdtemp(prefix="virtkit-bench-recover-"))
    # The fake hypervisor's state files stand for what a real engine keeps in its own
    # process (its cost is in the simulated waits): on tmpfs, so that this disk's rename
    # costs are not counted as virtkit's. The store, virtkit's own, stays on the disk.
    memory = Path(tempfile.mkdtemp(prefix="virtkit-bench-recover-", dir=SHM)) if SHM else None
    try:
        waits = dict(fake__spawn_latency_ms=SPAWN_MS, fake__volume_latency_ms=VOLUME_MS)
        serial = run(workdir, "fake", n, 1, volumes=VOLUMES, hypervisor_dir=memory, **waits)
        parallel = run(workdir, "fake", n, 8, volumes=VOLUMES, hypervisor_dir=memory,
                       **waits).wall
        simulated = n * (SPAWN_MS + VOLUMES * VOLUME_MS) / 1000.0
        as_slept = n * (slept_ms(SPAWN_MS) + VOLUMES * slept_ms(VOLUME_MS)) / 1000.0
        overhead_ms = (serial.wall - as_slept) / n * 1000.0
        fake_ms = (serial.in_driver - as_slept) / n * 1000.0
        print(f"fake, {n} instances x {VOLUMES} volumes, {SPAWN_MS} ms/spawn, "
              f"{VOLUME_MS} ms/volume; store in {workdir}, fake hypervisor state in "
              f"{memory or workdir}")
        print(f"  --parallel 1: {serial.wall:.2f} s (simulated waits {simulated:.2f} s nominal, "
              f"{as_slept:.2f} s as this machine sleeps them)")
        print(f"  --parallel 8: {parallel:.2f} s")
        print(f"  virtkit overhead per instance: {overhead_ms:.2f} ms (goal <= 5 ms; "
              f"{(serial.wall - simulated) / n * 1000.0:.2f} ms against the nominal waits)")
        print(f"    of which the fake driver's own work (its state files): {fake_ms:.2f} ms; "
              f"the recovery engine's (claims, journal, store, plan): "
              f"{overhead_ms - fake_ms:.2f} ms")
        print(f"  virtkit CPU time per instance: {serial.cpu / n * 1000:.2f} ms")
        if memory is not None:
            on_disk = run(workdir, "fake", n, 1, volumes=VOLUMES, label="disk", **waits)
            print(f"  with the fake hypervisor state on this disk too: "
                  f"{(on_disk.wall - as_slept) / n * 1000.0:.2f} ms, of which the fake "
                  f"driver's own {(on_disk.in_driver - as_slept) / n * 1000.0:.2f} ms")
        hot = run(workdir, "fake", n, 1, volumes=VOLUMES, label="hot", hypervisor_dir=memory)
        # The same work between waits takes longer than back to back: during each wait this
        # VM's caches fill with other work, so what follows runs cold.
        print(f"  the same with zero simulated waits: {hot.wall / n * 1000:.2f} ms per instance "
              f"({hot.cpu / n * 1000:.2f} ms CPU)")
        print(f"  store transactions per instance: {serial.commits / n:.1f}")
        disk = workdir / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        image = ImageRef(str(disk))
        uri = dict(libvirt__connection_uri="test:///default",
                   libvirt__images_path=str(workdir / "images"))
        lv1 = run(workdir, "libvirt", n, 1, volumes=0, image=image, **uri).wall
        lv8 = run(workdir, "libvirt", n, 8, volumes=0, image=image, **uri).wall
        print(f"libvirt test:///default, {n} instances: --parallel 1 {lv1:.2f} s "
              f"({lv1 / n * 1000:.2f} ms/instance), --parallel 8 {lv8:.2f} s")
        print(f"speed-up --parallel 8 vs 1 (fake, goal >= 5x): {serial.wall / parallel:.2f}x")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if memory is not None:
            shutil.rmtree(memory, ignore_errors=True)


if __name__ == "__main__":
    main()
