"""GlusterFS volumes on QEMU: attach+detach through the driver vs the same libvirt calls raw,
and sequential reads over native gluster (libgfapi) vs over the FUSE mount.

Attach+detach: one tiny guest on qemu:///system; a raw 64 MiB file on the test bed's Gluster
volume is hot-plugged at /dev/vdb and unplugged, CYCLES times per side, the sides alternating.
The raw side sends the disk XML the driver produced (read back from the domain) with
attachDeviceFlags and detachDeviceFlags (config + live, as the driver does) and waits for the
guest to release the disk by reading the live definition every 0.2 s, the driver's interval.
The driver also parses and validates the connection_info and probes the file through
libgfapi first (in a child process); that probe is timed on its own and printed.

Reads: QEMU's block layer reads READ_MB MiB sequentially (`qemu-img bench`, 1 MiB requests,
4 in flight, O_DIRECT so no host page cache) from one file, once through QEMU's gluster
driver and once through the FUSE mount: the two data paths a guest disk has. The tiny guest
has no shell to run a reader in, so the reads are QEMU's own, without a guest. After a
warm-up pass each, the best of READS. A libgfapi client lingers ~10 s in its tear-down after
a run completes; the bench stops it once its result is printed.
Goal (attach+detach): <= 1.2x.

Measured here: a live detach of a native gluster disk takes ~10 s on both sides, inside the
detachDeviceFlags call (QEMU closing its libgfapi client, the same ~10 s tear-down as
qemu-img's); the attach ~20-30 ms. Hence few cycles.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt

from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.model import BlockDevice, Flavor, ImageRef, Instance, VolumeConnection
from virt.volume import GlusterConnector

URI = "qemu:///system"
CYCLES = 3  # each detach takes ~10 s (below)
READS = 3
READ_MB = 256
FLAVOR = Flavor("bench", 1, 128, 1)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: scripts/testbed up, then "
                         "set -a; source .testbed/env; set +a")
    return value


def device(export: str, name: str) -> BlockDevice:
    return BlockDevice(VolumeConnection.from_connection_info(
        {"driver_volume_type": "glusterfs", "serial": "bench-gluster",
         "data": {"export": export, "name": name, "format": "raw"}}), "/dev/vdb",
        volume_id="bench-gluster")


def has_vdb(dom: libvirt.virDomain) -> bool:
    return "dev='vdb'" in dom.XMLDesc(0)


def wait_until(check, timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(interval)


def raw_disk_xml(dom: libvirt.virDomain) -> str:
    """The vdb disk as the driver defined it, without what libvirt adds (alias, address)."""
    for disk in ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).iter("disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == "vdb":
            for tag in ("alias", "address"):
                for child in disk.findall(tag):
                    disk.remove(child)
            return ET.tostring(disk, encoding="unicode")
    raise SystemExit("the driver's attach left no vdb in the definition")


def driver_cycle(driver: LibvirtDriver, inst: Instance, bdm: BlockDevice) -> float:
    began = time.perf_counter()
    driver.attach_volume(instance=inst, block_device=bdm)
    driver.detach_volume(instance=inst, block_device=bdm)
    return time.perf_counter() - began


def raw_cycle(dom: libvirt.virDomain, disk_xml: str) -> float:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE
    began = time.perf_counter()
    dom.attachDeviceFlags(disk_xml, flags)
    dom.detachDeviceFlags(disk_xml, flags)
    wait_until(lambda: not has_vdb(dom))
    return time.perf_counter() - began


def attach_detach(work: Path, export: str, mount: Path) -> dict[str, float]:
    name = f"bench-{uuid.uuid4().hex[:10]}.raw"
    with open(mount / name, "wb") as handle:
        handle.truncate(64 << 20)
    (mount / name).chmod(0o666)
    conf = build_conf(overrides={"state_path": str(work / "state"), "host": "bench"})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", URI, group="libvirt")
    conf.set_override("virt_type", os.environ.get("VIRTKIT_TEST_VIRT_TYPE", "auto"),
                      group="libvirt")
    driver = LibvirtDriver(conf)
    driver.init_host(host="bench")
    image = ImageRef(env("VIRTKIT_TEST_DISK"), kernel=env("VIRTKIT_TEST_KERNEL"),
                     ramdisk=env("VIRTKIT_TEST_RAMDISK"))
    inst = Instance(uuid=str(uuid.uuid4()), name="vk-bench-gluster", flavor=FLAVOR, image=image)
    bdm = device(export, name)
    conn = libvirt.open(URI)
    try:
        driver.spawn(instance=inst)
        wait_until(lambda: "VIRTKIT-DISKS-END" in driver.get_console_output(instance=inst),
                   timeout=120)
        dom = conn.lookupByUUIDString(inst.uuid)
        driver.attach_volume(instance=inst, block_device=bdm)  # warm-up, and the raw XML
        disk_xml = raw_disk_xml(dom)
        driver.detach_volume(instance=inst, block_device=bdm)
        raw_cycle(dom, disk_xml)
        runs: dict[str, list[float]] = {"raw": [], "driver": []}
        for i in range(CYCLES):
            order = (("raw", "driver") if i % 2 else ("driver", "raw"))
            for side in order:
                runs[side].append(raw_cycle(dom, disk_xml) if side == "raw"
                                  else driver_cycle(driver, inst, bdm))
        probe = GlusterConnector()
        probes = []
        for _ in range(CYCLES):
            began = time.perf_counter()
            probe.probe(bdm.connection, timeout=15)
            probes.append(time.perf_counter() - began)
    finally:
        driver.destroy(instance=inst)
        driver.cleanup_host(host="bench")
        conn.close()
        (mount / name).unlink(missing_ok=True)
    return {"raw": statistics.median(runs["raw"]), "driver": statistics.median(runs["driver"]),
            "probe": statistics.median(probes)}


def bench_read(target: str) -> float:
    """Seconds `qemu-img bench` takes to read READ_MB MiB sequentially from `target`."""
    argv = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-s", "1M", "-c", str(READ_MB),
            "-d", "4", target]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"Run completed in ([\d.]+) seconds", line)
            if found:
                return float(found.group(1))
        raise SystemExit(f"qemu-img bench on {target} failed (exit {proc.wait()})")
    finally:
        if proc.poll() is None:
            proc.terminate()  # libgfapi's tear-down, after the result
        proc.wait(timeout=30)


def reads(export: str, mount: Path) -> dict[str, float]:
    name = f"bench-read-{uuid.uuid4().hex[:10]}.raw"
    path = mount / name
    try:
        with open(path, "wb") as handle:
            for _ in range(READ_MB):
                handle.write(os.urandom(1 << 20))
        host, _, volume = export.partition(":/")
        targets = {"native": f"gluster://{host}/{volume}/{name}", "fuse": str(path)}
        best = {}
        for side, target in targets.items():
            bench_read(target)  # warm-up
            best[side] = min(bench_read(target) for _ in range(READS))
        return best
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    export = env("VIRTKIT_TEST_GLUSTER_VOLUME")
    mount = Path(env("VIRTKIT_TEST_GLUSTER_MOUNT"))
    if not os.path.ismount(mount):
        raise SystemExit(f"the Gluster volume is not mounted at {mount}")
    work = Path(tempfile.mkdtemp(prefix="virtkit-bench-gluster-", dir="/var/tmp"))
    work.chmod(0o711)
    try:
        r = attach_detach(work, export, mount)
        read = reads(export, mount)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"attach+detach of a GlusterFS volume (median of {CYCLES}): raw libvirt "
          f"{r['raw'] * 1e3:.0f} ms, driver {r['driver'] * 1e3:.0f} ms; the driver's libgfapi "
          f"probe alone {r['probe'] * 1e3:.0f} ms (driver without it: "
          f"{(r['driver'] - r['probe']) / r['raw']:.2f}x)")
    for side, label in (("native", "native gluster (libgfapi)"), ("fuse", "FUSE mount")):
        print(f"sequential read {READ_MB} MiB through QEMU, {label}: "
              f"{READ_MB / read[side]:.0f} MiB/s")
    print(f"read throughput native/FUSE: {read['fuse'] / read['native']:.2f}x")
    print(f"ratio driver/raw (attach+detach, the same libvirt calls): "
          f"{r['driver'] / r['raw']:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
