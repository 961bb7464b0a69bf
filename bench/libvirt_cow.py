"""Spawn time on qemu:///system with a 1 GiB base image vs a 10 MiB one (copy-on-write).

Both bases are fully allocated raw files. The first spawn of each copies the base into the
image cache (reported apart); the measured spawns (define + start) only write a qcow2
overlay, so the base size should not matter. Goal: <= 1.2x.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.model import Flavor, ImageRef, Instance

RUNS = 5


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="virtkit-bench-cow-", dir="/var/tmp"))
    work.chmod(0o711)
    conf = build_conf(overrides={"state_path": str(work / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "qemu:///system", group="libvirt")
    conf.set_override("virt_type", os.environ.get("VIRTKIT_TEST_VIRT_TYPE", "qemu"),
                      group="libvirt")
    driver = LibvirtDriver(conf)
    driver.init_host(host="bench")
    flavor = Flavor("b", 1, 64, root_gb=2)
    results = {}
    try:
        for label, size in (("10MiB", "10M"), ("1GiB", "1G")):
            base = work / f"base-{label}.img"
            subprocess.run(["fallocate", "-l", size, str(base)], check=True, timeout=60)
            times = []
            for i in range(RUNS + 1):
                inst = Instance(uuid=str(uuid.uuid4()), name=f"cow-{label}-{i}", flavor=flavor)
                began = time.perf_counter()
                driver.spawn(instance=inst, image=ImageRef(str(base), disk_format="raw"))
                times.append(time.perf_counter() - began)
                driver.destroy(instance=inst)
            results[label] = (times[0], statistics.median(times[1:]))
            print(f"{label} base: first spawn (copies into cache) {times[0]:.3f}s, "
                  f"median of {RUNS} cached spawns {results[label][1]:.3f}s")
    finally:
        driver.cleanup_host(host="bench")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    ratio = results["1GiB"][1] / results["10MiB"][1]
    print(f"ratio spawn 1GiB/10MiB base: {ratio:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
