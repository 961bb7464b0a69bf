"""Spawn time on qemu:///system with a 1 GiB base image vs a 10 MiB one (copy-on-write).

Both bases are fully allocated raw files. The first spawn of each copies the base into the
image cache (reported apart); the measured spawns (define + start) only write a qcow2
overlay, so the base size should not matter. The measured spawns alternate between the
two bases (drift on this shared machine hits both); medians of RUNS each. Goal: <= 1.2x.
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

RUNS = 8


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
    bases = {}
    times: dict[str, list[float]] = {"10MiB": [], "1GiB": []}

    def spawn(label: str, i: int) -> float:
        inst = Instance(uuid=str(uuid.uuid4()), name=f"cow-{label}-{i}", flavor=flavor,
                        image=ImageRef(str(bases[label]), disk_format="raw"))
        began = time.perf_counter()
        driver.spawn(instance=inst)
        took = time.perf_counter() - began
        driver.destroy(instance=inst)
        return took

    try:
        for label, size in (("10MiB", "10M"), ("1GiB", "1G")):
            bases[label] = work / f"base-{label}.img"
            subprocess.run(["fallocate", "-l", size, str(bases[label])], check=True, timeout=60)
            print(f"{label} base: first spawn (copies into cache) {spawn(label, 0):.3f}s")
        for i in range(1, RUNS + 1):
            for label in (("10MiB", "1GiB") if i % 2 else ("1GiB", "10MiB")):
                times[label].append(spawn(label, i))
    finally:
        driver.cleanup_host(host="bench")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    results = {label: (0.0, statistics.median(t)) for label, t in times.items()}
    for label, t in times.items():
        print(f"{label} base: median of {RUNS} cached spawns {results[label][1]:.3f}s "
              f"({', '.join(f'{x:.3f}' for x in t)})")
    ratio = results["1GiB"][1] / results["10MiB"][1]
    print(f"ratio spawn 1GiB/10MiB base: {ratio:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
