"""Tiny guest spawn-to-marker on QEMU: the driver vs `virsh create` of the same XML.

The raw side gets the XML the driver defined, with a fresh overlay (made before the clock
starts) and a fresh console log, and times `virsh create` until the marker is on the serial
log. Both sides wait for the marker the same way: the log is read incrementally every 5 ms
(a coarser poll adds up to its interval to each side). The order alternates between pairs
(driver first, then raw first) so drift on this shared machine hits both; medians of RUNS
are compared. Goal: <= 1.1x.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt

from drivers.libvirt import qcow2
from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.model import Flavor, ImageRef, Instance

RUNS = 6
POLL_S = 0.005
MARKER = b"VIRTKIT-GUEST-UP"
URI = "qemu:///system"


def wait_marker(path: Path, timeout: float = 120) -> None:
    """Return once MARKER is in the file; reads only what was appended since the last poll."""
    deadline = time.monotonic() + timeout
    seen = b""
    handle = None
    try:
        while time.monotonic() < deadline:
            if handle is None:
                try:
                    handle = open(path, "rb")  # kept open across polls
                except FileNotFoundError:
                    time.sleep(POLL_S)
                    continue
            seen = seen[-len(MARKER):] + handle.read()
            if MARKER in seen:
                return
            time.sleep(POLL_S)
    finally:
        if handle is not None:
            handle.close()
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
    instances = work / "state" / "instances"

    def driver_run(i: int) -> None:
        inst = Instance(uuid=str(uuid.uuid4()), name=f"boot-{i}", flavor=flavor, image=image)
        began = time.perf_counter()
        driver.spawn(instance=inst)
        wait_marker(instances / inst.uuid / "console.log")
        drv_times.append(time.perf_counter() - began)
        driver.destroy(instance=inst)

    def raw_run(i: int) -> None:
        # The XML the driver defines, for a new uuid and name, with its files made before
        # the clock starts: a fresh overlay on the same base, the kernel and ramdisk.
        raw_uuid = str(uuid.uuid4())
        directory = instances / raw_uuid
        directory.mkdir(mode=0o711)
        for name in ("kernel", "ramdisk"):
            shutil.copyfile(instances / template_uuid / name, directory / name)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        backing, str(directory / "disk"), "1G"], check=True, timeout=60)
        xml_file = work / f"raw-{i}.xml"
        xml_file.write_text(template.replace(template_uuid, raw_uuid)
                            .replace(">boot-template<", f">raw-boot-{i}<"))
        began = time.perf_counter()
        virsh("create", str(xml_file))
        wait_marker(directory / "console.log")
        raw_times.append(time.perf_counter() - began)
        virsh("destroy", raw_uuid)

    try:
        probe = Instance(uuid=str(uuid.uuid4()), name="boot-template", flavor=flavor,
                         image=image)
        driver.spawn(instance=probe, power_on=False)
        template_uuid = probe.uuid
        template = driver.connection.connection().lookupByUUIDString(probe.uuid).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE)
        backing = qcow2.read_header(str(instances / probe.uuid / "disk")).backing_file or ""
        for i in range(RUNS):
            first, second = (driver_run, raw_run) if i % 2 == 0 else (raw_run, driver_run)
            first(i)
            second(i)
        driver.destroy(instance=probe)
    finally:
        driver.cleanup_host(host="bench")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    d, r = statistics.median(drv_times), statistics.median(raw_times)
    print(f"driver spawn-to-marker: median {d:.3f}s of {[round(t, 3) for t in drv_times]}")
    print(f"virsh create-to-marker: median {r:.3f}s of {[round(t, 3) for t in raw_times]}")
    print(f"ratio driver/virsh: {d / r:.2f}x (goal <= 1.1x)")


if __name__ == "__main__":
    main()
