"""spawn + destroy of 500 instances on test:///default: the driver vs the same raw libvirt calls.

The raw side makes exactly the libvirt calls the driver makes (lookup, define, start, lookup,
XMLDesc, destroy, undefine) with a prebuilt XML and no disk files, so the ratio is the
driver's own overhead: XML building, qcow2 overlay files, error mapping. Goal: <= 1.5x.

It runs twice: with instances_path on the disk of this machine (ext4 mounted with
`discard`: creating and removing an instance directory costs ~1-3 ms of file-system time,
several times a raw test-driver cycle) and on tmpfs, where what remains is the driver's
own code. The last line is the tmpfs ratio; both are printed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt

from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.model import Flavor, ImageRef, Instance

N = 500
FLAVOR = Flavor("bench", 1, 128, 1)


def raw_cycle(conn: libvirt.virConnect, xml_template: str, flags: int) -> float:
    uuids = [str(uuid.uuid4()) for _ in range(N)]
    began = time.perf_counter()
    for uid in uuids:
        try:
            conn.lookupByUUIDString(uid)
        except libvirt.libvirtError:
            pass
        conn.defineXML(xml_template.replace("@UUID@", uid).replace("@NAME@", f"raw-{uid[:13]}"))
        conn.lookupByUUIDString(uid).createWithFlags(0)
    for uid in uuids:
        dom = conn.lookupByUUIDString(uid)
        dom.XMLDesc(0)
        dom.destroy()
        dom.undefineFlags(flags)
    return time.perf_counter() - began


def driver_cycle(driver: LibvirtDriver, image: ImageRef) -> float:
    instances = [Instance(uuid=str(uuid.uuid4()), name=f"drv-{i}", flavor=FLAVOR)
                 for i in range(N)]
    began = time.perf_counter()
    for inst in instances:
        driver.spawn(instance=inst, image=image)
    for inst in instances:
        driver.destroy(instance=inst)
    return time.perf_counter() - began


def measure(where: str) -> tuple[float, float]:
    """(raw seconds, driver seconds) for N spawn+destroy with instances under `where`."""
    work = Path(tempfile.mkdtemp(prefix="virtkit-bench-", dir=where))
    base = work / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True,
                   timeout=60)
    conf = build_conf(overrides={"state_path": str(work / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    driver = LibvirtDriver(conf)
    driver.init_host(host="bench")
    image = ImageRef(str(base))
    # Warm up both paths (image cache, learned undefine flags), then take the best of 3.
    probe = Instance(uuid=str(uuid.uuid4()), name="warm", flavor=FLAVOR)
    driver.spawn(instance=probe, image=image)
    template = driver.host.connection().lookupByUUIDString(probe.uuid).XMLDesc(0)
    driver.destroy(instance=probe)
    template = template.replace(probe.uuid, "@UUID@").replace(">warm<", ">@NAME@<")
    conn = libvirt.open("test:///default")
    raw = min(raw_cycle(conn, template, driver._undefine_flags) for _ in range(3))
    drv = min(driver_cycle(driver, image) for _ in range(3))
    driver.cleanup_host(host="bench")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return raw, drv


def main() -> None:
    results = {}
    for label, where in (("disk", "/var/tmp"), ("tmpfs", "/dev/shm")):
        raw, drv = results[label] = measure(where)
        print(f"[{label}] raw libvirt: {N} spawn+destroy in {raw:.3f}s ({raw / N * 1e3:.3f} ms each)")
        print(f"[{label}] driver:      {N} spawn+destroy in {drv:.3f}s ({drv / N * 1e3:.3f} ms each)")
    raw, drv = results["disk"]
    print(f"ratio driver/raw with instances on disk: {drv / raw:.2f}x")
    raw, drv = results["tmpfs"]
    print(f"ratio driver/raw (instances on tmpfs, driver overhead): {drv / raw:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
