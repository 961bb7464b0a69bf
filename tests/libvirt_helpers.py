"""Helpers for the libvirt tests: the test bed's libvirtd + QEMU and libvirt's own schema.

virsh on the local socket, a driver on the test bed's libvirtd, the tiny guest's image
(paths from scripts/testbed), console waits, work directories the QEMU user can reach, tgtd
LUN factories, qcow2 base images, and domain XML checked with virt-xml-validate. Fixtures are built from these in each test module
(their scope and options differ).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from drivers.libvirt.driver import LibvirtDriver
from tests.iscsi_target import TargetFactory
from tests.testbed import env
from virt.config import build_conf
from virt.model import BlockDevice, ImageRef, VolumeConnection

URI = "qemu:///system"
BOOT_TIMEOUT = 90


def virsh(*args: str) -> str:
    """virsh on the local socket: what libvirtd itself holds, not what a driver says."""
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          timeout=60, check=False).stdout


def libvirt_up() -> bool:
    return shutil.which("virsh") is not None and bool(virsh("version").strip())


@contextlib.contextmanager
def libvirt_driver(workdir: Path, host: str, *, uri: str = URI,
                   **options: object) -> Iterator[LibvirtDriver]:
    """A LibvirtDriver on `uri` keeping its state in `workdir`, set up as `host` and cleaned up
    after; `options` are more `[libvirt]` options. virt_type is VIRTKIT_TEST_VIRT_TYPE's."""
    conf = build_conf(overrides={"state_path": str(workdir / "state"), "host": host})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", uri, group="libvirt")
    conf.set_override("virt_type", os.environ.get("VIRTKIT_TEST_VIRT_TYPE", "auto"),
                      group="libvirt")
    for name, value in options.items():
        conf.set_override(name, value, group="libvirt")
    driver = LibvirtDriver(conf)
    driver.init_host(host=host)
    try:
        yield driver
    finally:
        driver.cleanup_host(host=host)


def tiny_guest_image() -> ImageRef:
    """The tiny guest built by scripts/build-test-image (kernel, initramfs, root disk)."""
    return ImageRef(env("VIRTKIT_TEST_DISK"), kernel=env("VIRTKIT_TEST_KERNEL"),
                    ramdisk=env("VIRTKIT_TEST_RAMDISK"))


def wait_console(driver, instance, pattern: str, timeout: float = BOOT_TIMEOUT,
                 count: int = 1, max_bytes: int = 1 << 20) -> str:
    """Poll the last `max_bytes` of get_console_output until `pattern` (a regex) occurs
    `count` times."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = driver.get_console_output(instance=instance, max_bytes=max_bytes)
        if len(re.findall(pattern, out)) >= count:
            return out
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} x{count} not on the console within {timeout}s:\n{out[-3000:]}")


@contextlib.contextmanager
def qemu_workdir(prefix: str) -> Iterator[Path]:
    """A directory under /var/tmp, removed afterwards. QEMU runs as libvirt-qemu: every
    directory above its files must be traversable."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lun_factory(workdir: Path) -> Iterator[TargetFactory]:
    """tgtd targets backed by files in `workdir/luns`, all removed afterwards."""
    (workdir / "luns").mkdir()
    factory = TargetFactory(workdir / "luns", os.environ.get("VIRTKIT_TEST_ISCSI_PORTAL",
                                                             "127.0.0.1:3260"))
    try:
        yield factory
    finally:
        factory.cleanup()


def lun_device(lun, mountpoint: str, **overrides) -> BlockDevice:
    """A block device for `lun` (its connection_info, with `overrides` in its data)."""
    return BlockDevice(VolumeConnection.from_connection_info(lun.connection_info(**overrides)),
                       mountpoint)


def qcow2_base(path: Path, size: str = "16M") -> ImageRef:
    """An empty qcow2 image at `path`, as a base image for spawns that boot nothing."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True,
                   timeout=60)
    return ImageRef(str(path))


def validate_domain_xml(directory: Path, text: str) -> None:
    """Check `text` against libvirt's own domain schema with virt-xml-validate."""
    assert shutil.which("virt-xml-validate"), "virt-xml-validate (libvirt-clients) is needed"
    path = directory / "domain.xml"
    path.write_text(text)
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout + text
