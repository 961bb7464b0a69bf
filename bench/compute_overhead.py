"""What ComputeService's record keeping costs over calling the driver directly.

Runs the same boot → stop → start → delete cycle N times on the fake driver twice in one
process: once through ComputeService (SQLite store, task-state claims, events) and once on
the bare driver. The fake driver does almost nothing, so this is the worst case: with a real
engine the store's share shrinks to a few percent. The last line is the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from virt.compute import ComputeService
from virt.config import build_conf
from virt.driver import load_driver
from virt.model import Flavor, ImageRef, Instance, new_uuid

FLAVOR = Flavor("m1.tiny", 1, 512, 1)
IMAGE = ImageRef("cirros")


def through_service(service: ComputeService, i: int) -> None:
    name = f"bench-{i}"
    service.boot(name, image=IMAGE, flavor=FLAVOR)
    service.stop(name, timeout=1)
    service.start(name)
    service.delete(name)


def on_driver(driver, i: int) -> None:
    instance = Instance(uuid=new_uuid(), name=f"raw-{i}", flavor=FLAVOR, image=IMAGE)
    driver.spawn(instance=instance)
    driver.get_info(instance=instance)
    driver.power_off(instance=instance, timeout=1)
    driver.power_on(instance=instance)
    driver.destroy(instance=instance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--cycles", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="virtkit-bench-") as state:
        conf = build_conf(overrides={"state_path": state, "host": "bench"})
        with ComputeService(conf) as service:
            driver = load_driver("fake", conf)
            driver.init_host(host="bench-raw")
            through_service(service, -1)  # warm up
            on_driver(driver, -1)
            service_s, driver_s = [], []
            for i in range(args.cycles):
                began = time.perf_counter()
                through_service(service, i)
                service_s.append(time.perf_counter() - began)
                began = time.perf_counter()
                on_driver(driver, i)
                driver_s.append(time.perf_counter() - began)
    svc_ms = statistics.median(service_s) * 1000
    raw_ms = statistics.median(driver_s) * 1000
    print(f"boot/stop/start/delete cycle, median of {args.cycles}:")
    print(f"  ComputeService + SQLite store  {svc_ms:7.2f} ms")
    print(f"  fake driver alone              {raw_ms:7.2f} ms")
    print(f"  record keeping per cycle       {svc_ms - raw_ms:7.2f} ms")
    print(f"ratio service / raw driver = {svc_ms / raw_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
