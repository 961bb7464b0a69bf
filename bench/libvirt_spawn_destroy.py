"""spawn + destroy of 500 instances on test:///default: the driver vs a minimal raw client.

The raw side makes the calls a minimal libvirt client makes for the same domains, with a
prebuilt XML and no files: defineXML + createWithFlags on the returned handle, then
lookupByUUIDString + destroy + undefineFlags. The driver additionally checks that the UUID
is free (defineXML would silently redefine an existing domain), builds the XML (from a
cached per-flavor/image/layout template), listens to lifecycle events, and creates and
removes each instance's real files (directory + qcow2 overlay). It does not read the
definition back on destroy for domains it defined without CHAP secrets. That file work is also timed on its own and printed, and so is
the cost of the event subscription (a diagnostic round with it off: libvirt-python calls
into Python on its event thread for each of the 4 events of a cycle).

It runs twice: with instances_path on the disk of this machine (ext4 mounted with
`discard`: creating and removing an instance directory costs ~1-3 ms of file-system time,
several times a raw test-driver cycle) and on tmpfs. Raw and driver rounds alternate (the
best of 3 each); the driver is disconnected while raw runs, so its event callbacks do not
slow the raw side (test:///default is shared within a process). The last line is the tmpfs
ratio; both are printed.
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

from drivers.libvirt import images
from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.model import Flavor, ImageRef, Instance

N = 500
ROUNDS = 3
FLAVOR = Flavor("bench", 1, 128, 1)


def raw_cycle(conn: libvirt.virConnect, xml_template: str, flags: int) -> float:
    uuids = [str(uuid.uuid4()) for _ in range(N)]
    began = time.perf_counter()
    for uid in uuids:
        xml = xml_template.replace("@UUID@", uid).replace("@NAME@", f"raw-{uid[:13]}")
        conn.defineXML(xml).createWithFlags(0)
    for uid in uuids:
        dom = conn.lookupByUUIDString(uid)
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


def files_cycle(driver: LibvirtDriver, image: ImageRef, instances_path: str) -> float:
    """The per-instance file work alone: the same directories and overlays, no libvirt."""
    uuids = [str(uuid.uuid4()) for _ in range(N)]
    began = time.perf_counter()
    for uid in uuids:
        images.create_instance_disks(driver._cache, instances_path, uid, image, FLAVOR)
    for uid in uuids:
        images.remove_instance_dir(images.instance_dir(instances_path, uid))
    return time.perf_counter() - began


def new_driver(work: Path, events: bool = True) -> LibvirtDriver:
    conf = build_conf(overrides={"state_path": str(work / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    driver = LibvirtDriver(conf)
    if not events:  # diagnostic only: what the lifecycle-event subscription costs
        driver._host._on_lifecycle = None
    driver.init_host(host="bench")
    return driver


def driver_round(work: Path, image: ImageRef, events: bool = True) -> tuple[float, float]:
    """(driver seconds, file-work seconds) with a freshly connected, warmed-up driver."""
    driver = new_driver(work, events)
    try:
        warm = Instance(uuid=str(uuid.uuid4()), name="warm", flavor=FLAVOR)
        driver.spawn(instance=warm, image=image)  # image cache, learned undefine flags
        driver.destroy(instance=warm)
        files = files_cycle(driver, image, driver.conf.instances_path)
        return driver_cycle(driver, image), files
    finally:
        driver.cleanup_host(host="bench")


def template(work: Path, image: ImageRef) -> tuple[str, int]:
    """The XML the driver defines for one instance (as a template) and its undefine flags."""
    driver = new_driver(work)
    try:
        probe = Instance(uuid=str(uuid.uuid4()), name="warm", flavor=FLAVOR)
        driver.spawn(instance=probe, image=image)
        xml = driver.host.connection().lookupByUUIDString(probe.uuid).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE)
        driver.destroy(instance=probe)
        flags = driver._undefine_flags
    finally:
        driver.cleanup_host(host="bench")
    return xml.replace(probe.uuid, "@UUID@").replace(">warm<", ">@NAME@<"), flags


def measure(where: str) -> tuple[float, float, float, float]:
    """(raw, driver, file work, driver without events) seconds for N spawn+destroy."""
    work = Path(tempfile.mkdtemp(prefix="virtkit-bench-", dir=where))
    base = work / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True,
                   timeout=60)
    image = ImageRef(str(base))
    xml, flags = template(work, image)
    conn = libvirt.open("test:///default")
    raw_cycle(conn, xml, flags)  # warm-up
    raws, drvs, files, quiet = [], [], [], []
    for _ in range(ROUNDS):
        raws.append(raw_cycle(conn, xml, flags))
        drv, fs = driver_round(work, image)
        drvs.append(drv)
        files.append(fs)
        quiet.append(driver_round(work, image, events=False)[0])
    conn.close()
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return min(raws), min(drvs), min(files), min(quiet)


def main() -> None:
    results = {}
    for label, where in (("disk", "/var/tmp"), ("tmpfs", "/dev/shm")):
        raw, drv, files, quiet = results[label] = measure(where)
        print(f"[{label}] raw libvirt: {N} spawn+destroy in {raw:.3f}s ({raw / N * 1e3:.3f} ms each)")
        print(f"[{label}] driver:      {N} spawn+destroy in {drv:.3f}s ({drv / N * 1e3:.3f} ms each)")
        print(f"[{label}] of which instance files (mkdir + qcow2 overlay + removal): "
              f"{files / N * 1e3:.3f} ms each; driver without them: {(drv - files) / raw:.2f}x raw")
        print(f"[{label}] of which lifecycle-event delivery (diagnostic run without the "
              f"subscription): {(drv - quiet) / N * 1e3:.3f} ms each")
    raw, drv, _, _ = results["disk"]
    print(f"ratio driver/raw with instances on disk: {drv / raw:.2f}x")
    raw, drv, _, _ = results["tmpfs"]
    print(f"ratio driver/raw (instances on tmpfs): {drv / raw:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
