"""spawn + destroy of 500 instances on test:///default: the driver vs a minimal raw client.

The raw side makes the calls a minimal libvirt client makes for the same domains, with a
prebuilt XML and no files: defineXML + createWithFlags on the returned handle, then
lookupByUUIDString + destroy + undefineFlags. The driver additionally checks that the UUID
is free (defineXML would silently redefine an existing domain), builds the XML (from a
cached per-flavor/image/layout template), and creates and removes each instance's real files
(directory + qcow2 overlay). It does not read the definition back on destroy for domains it
defined without CHAP secrets. The file work is also timed on its own and printed.

Two pairings, each like for like:
- quiet: nobody listens to lifecycle events (the driver subscribes to libvirt's events only
  once a listener is registered, as virtkit-recover and embedders without one run it);
- listening: a listener on the driver (as ComputeService registers) and, on the raw side, a
  lifecycle callback that does nothing. libvirt-python then calls into Python on its event
  thread for each of the 4 events of a cycle, on both sides.

It runs twice: with instances_path on the disk of this machine (ext4 mounted with
`discard`: creating and removing an instance directory costs ~1-3 ms of file-system time,
several times a raw test-driver cycle) and on tmpfs. Raw and driver rounds alternate (the
best of 3 each); the driver is disconnected while raw runs and the raw callback deregistered
while the driver runs (test:///default is shared within a process). The last line is the
quiet tmpfs ratio (the issue's pairing: the raw side makes the same calls and subscribes to
nothing); the listening ratio is printed on the line before it.
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
from virt.driver.rollback import SpawnRollback
from virt.model import Flavor, ImageRef, Instance

N = 500
ROUNDS = 3
FLAVOR = Flavor("bench", 1, 128, 1)


def raw_cycle(conn: libvirt.virConnect, xml_template: str, flags: int,
              listening: bool = False) -> float:
    uuids = [str(uuid.uuid4()) for _ in range(N)]
    callback = None
    if listening:
        callback = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda *_args: None, None)
    try:
        began = time.perf_counter()
        for uid in uuids:
            xml = xml_template.replace("@UUID@", uid).replace("@NAME@", f"raw-{uid[:13]}")
            conn.defineXML(xml).createWithFlags(0)
        for uid in uuids:
            dom = conn.lookupByUUIDString(uid)
            dom.destroy()
            dom.undefineFlags(flags)
        return time.perf_counter() - began
    finally:
        if callback is not None:
            conn.domainEventDeregisterAny(callback)


def driver_cycle(driver: LibvirtDriver, image: ImageRef) -> float:
    instances = [Instance(uuid=str(uuid.uuid4()), name=f"drv-{i}", flavor=FLAVOR, image=image)
                 for i in range(N)]
    began = time.perf_counter()
    for inst in instances:
        driver.spawn(instance=inst)
    for inst in instances:
        driver.destroy(instance=inst)
    return time.perf_counter() - began


def files_cycle(driver: LibvirtDriver, image: ImageRef, instances_path: str) -> float:
    """The per-instance file work alone: the same directories and overlays, no libvirt."""
    uuids = [str(uuid.uuid4()) for _ in range(N)]
    began = time.perf_counter()
    for uid in uuids:
        with SpawnRollback(uid) as rollback:
            images.create_instance_disks(driver._cache, instances_path, uid, image, FLAVOR,
                                         rollback=rollback)
    for uid in uuids:
        images.remove_instance_dir(images.instance_dir(instances_path, uid))
    return time.perf_counter() - began


def new_driver(work: Path, listening: bool = False) -> LibvirtDriver:
    conf = build_conf(overrides={"state_path": str(work / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    driver = LibvirtDriver(conf)
    if listening:
        driver.register_event_listener(lambda _event: None)
    driver.init_host(host="bench")
    return driver


def driver_round(work: Path, image: ImageRef, listening: bool = False) -> tuple[float, float]:
    """(driver seconds, file-work seconds) with a freshly connected, warmed-up driver."""
    driver = new_driver(work, listening)
    try:
        warm = Instance(uuid=str(uuid.uuid4()), name="warm", flavor=FLAVOR, image=image)
        driver.spawn(instance=warm)  # image cache, learned undefine flags
        driver.destroy(instance=warm)
        files = files_cycle(driver, image, driver.conf.instances_path)
        return driver_cycle(driver, image), files
    finally:
        driver.cleanup_host(host="bench")


def template(work: Path, image: ImageRef) -> tuple[str, int]:
    """The XML the driver defines for one instance (as a template) and its undefine flags."""
    driver = new_driver(work)
    try:
        probe = Instance(uuid=str(uuid.uuid4()), name="warm", flavor=FLAVOR, image=image)
        driver.spawn(instance=probe)
        xml = driver.connection.connection().lookupByUUIDString(probe.uuid).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE)
        driver.destroy(instance=probe)
        flags = driver._undefiner.flags
    finally:
        driver.cleanup_host(host="bench")
    return xml.replace(probe.uuid, "@UUID@").replace(">warm<", ">@NAME@<"), flags


def measure(where: str) -> dict[str, float]:
    """Best-of-ROUNDS seconds for N spawn+destroy: raw and driver, quiet and listening, and
    the driver's file work alone."""
    work = Path(tempfile.mkdtemp(prefix="virtkit-bench-", dir=where))
    base = work / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True,
                   timeout=60)
    image = ImageRef(str(base))
    xml, flags = template(work, image)
    conn = libvirt.open("test:///default")
    raw_cycle(conn, xml, flags)  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in ("raw", "driver", "raw_l", "driver_l", "files")}
    for _ in range(ROUNDS):
        runs["raw"].append(raw_cycle(conn, xml, flags))
        drv, fs = driver_round(work, image)
        runs["driver"].append(drv)
        runs["files"].append(fs)
        runs["raw_l"].append(raw_cycle(conn, xml, flags, listening=True))
        runs["driver_l"].append(driver_round(work, image, listening=True)[0])
    conn.close()
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return {k: min(v) for k, v in runs.items()}


def ms(seconds: float) -> str:
    return f"{seconds / N * 1e3:.3f} ms"


def main() -> None:
    results = {}
    for label, where in (("disk", "/var/tmp"), ("tmpfs", "/dev/shm")):
        r = results[label] = measure(where)
        print(f"[{label}] quiet:     raw {ms(r['raw'])}, driver {ms(r['driver'])} per "
              f"spawn+destroy = {r['driver'] / r['raw']:.2f}x")
        print(f"[{label}] listening: raw {ms(r['raw_l'])}, driver {ms(r['driver_l'])} = "
              f"{r['driver_l'] / r['raw_l']:.2f}x (driver listening vs quiet raw: "
              f"{r['driver_l'] / r['raw']:.2f}x)")
        print(f"[{label}] instance files alone (mkdir + qcow2 overlay + removal): "
              f"{ms(r['files'])}; quiet driver without them: "
              f"{(r['driver'] - r['files']) / r['raw']:.2f}x raw")
    r = results["tmpfs"]
    print(f"with a listener on both sides (instances on tmpfs): "
          f"{r['driver_l'] / r['raw_l']:.2f}x")
    print(f"ratio driver/raw (the same raw libvirt calls, instances on tmpfs): "
          f"{r['driver'] / r['raw']:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
