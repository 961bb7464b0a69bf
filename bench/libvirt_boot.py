"""Tiny guest spawn-to-marker on QEMU: the driver vs `virsh create` of the same XML.

The raw side gets the XML the driver defined, with a fresh overlay (made before the clock
starts) and a fresh console log, and times `virsh create` until the marker is on the serial
log. Runs alternate; medians are compared. Goal: <= 1.1x.
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

from drivers.libvirt import qcow2
from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.model import Flavor, ImageRef, Instance

RUNS = 3
MARKER = b"VIRTKIT-GUEST-UP"
URI = "qemu:///system"


def wait_marker(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if MARKER in path.read_bytes():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"no marker in {path} within {timeout}s")


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-c", URI, *args], check=True, timeout=120, capture_output=True)


def main() -> None:
    image = ImageRef(os.environ["VIRTKIT_TEST_DISK"], kernel=os.environ["VIRTKIT_TEST_KERNEL"],
                     ramdisk=os.environ["VIRTKIT_TEST_RAMDISK"])
    work = Path(tempfile.mkdtemp(prefix="virtkit-bench-boot-", dir="/var/tmp"))
    work.chmod(0o711)
    conf = build_conf(overrides={"state_path": str(work / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", URI, group="libvirt")
    conf.set_override("virt_type", os.environ.get("VIRTKIT_TEST_VIRT_TYPE", "qemu"),
                      group="libvirt")
    driver = LibvirtDriver(conf)
    driver.init_host(host="bench")
    flavor = Flavor("tiny", 1, 128, 1)
    drv_times, raw_times = [], []
    # Warm the image cache: the first-ever spawn copies the base, kernel and ramdisk in.
    driver._cache.fetch(image.ref)
    driver._cache.fetch_file(image.kernel or "", "kernel")
    driver._cache.fetch_file(image.ramdisk or "", "ramdisk")
    try:
        for i in range(RUNS):
            inst = Instance(uuid=str(uuid.uuid4()), name=f"boot-{i}", flavor=flavor)
            began = time.perf_counter()
            driver.spawn(instance=inst, image=image)
            log = work / "state" / "instances" / inst.uuid / "console.log"
            wait_marker(log)
            drv_times.append(time.perf_counter() - began)
            xml = driver.host.connection().lookupByUUIDString(inst.uuid).XMLDesc(
                __import__("libvirt").VIR_DOMAIN_XML_INACTIVE)
            driver.destroy(instance=inst, destroy_disks=False)
            # The same XML, booted raw: fresh overlay copy and log, new name and uuid.
            raw_uuid = str(uuid.uuid4())
            raw_xml = xml.replace(inst.uuid, raw_uuid).replace(f">boot-{i}<", f">raw-boot-{i}<")
            (work / "state" / "instances" / inst.uuid / "console.log").unlink()
            os.rename(work / "state" / "instances" / inst.uuid,
                      work / "state" / "instances" / raw_uuid)
            disk = work / "state" / "instances" / raw_uuid / "disk"
            backing = qcow2.read_header(str(disk)).backing_file or ""
            disk.unlink()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            backing, str(disk), "1G"],
                           check=True, timeout=60)
            xml_file = work / f"raw-{i}.xml"
            xml_file.write_text(raw_xml)
            began = time.perf_counter()
            virsh("create", str(xml_file))
            wait_marker(work / "state" / "instances" / raw_uuid / "console.log")
            raw_times.append(time.perf_counter() - began)
            virsh("destroy", raw_uuid)
    finally:
        driver.cleanup_host(host="bench")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    d, r = statistics.median(drv_times), statistics.median(raw_times)
    print(f"driver spawn-to-marker: median {d:.2f}s of {drv_times}")
    print(f"virsh create-to-marker: median {r:.2f}s of {raw_times}")
    print(f"ratio driver/virsh: {d / r:.2f}x (goal <= 1.1x)")


if __name__ == "__main__":
    main()
