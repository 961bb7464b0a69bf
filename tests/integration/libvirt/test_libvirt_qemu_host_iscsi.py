"""`iscsi_attach = host` for real: os-brick logs the host in to tgtd's LUNs with the kernel
initiator, and the tiny guest on qemu:///system sees them as block disks.

Needs the kernel initiator (the iscsi_tcp module, open-iscsi's iscsiadm and iscsid) and the
`libvirt-host-iscsi` extra (os-brick). The test bed has neither (TESTBED.md: iscsi_tcp is not
available there), so the module skips itself, also under VIRTKIT_REQUIRE_TESTBED: the test bed
cannot provide these, and `make test` does not install the extra. Where they exist, the rest
(libvirtd, tgtd, the image) is required as for every other real-engine test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from drivers.libvirt import volumes_host, xml

# Decided before anything else: not through tests.testbed.require, which fails under
# VIRTKIT_REQUIRE_TESTBED; no test bed can provide a kernel module.
if volumes_host._kernel_module_problem() is not None:
    pytest.skip("no kernel iSCSI initiator (iscsi_tcp) on this machine, see TESTBED.md",
                allow_module_level=True)
_MISSING = volumes_host.missing_requirements()
if _MISSING:
    pytest.skip("host-mode iSCSI is not usable here: " + "; ".join(_MISSING),
                allow_module_level=True)

from drivers.libvirt.driver import LibvirtDriver  # noqa: E402
from tests.iscsi_target import TargetFactory, tgtd_available  # noqa: E402
from tests.testbed import env, require  # noqa: E402
from virt.config import build_conf  # noqa: E402
from virt.model import (  # noqa: E402
    BlockDevice,
    Flavor,
    ImageRef,
    Instance,
    VolumeConnection,
)

pytestmark = [pytest.mark.libvirt_qemu, pytest.mark.iscsi, pytest.mark.slow]
URI = "qemu:///system"
BOOT_TIMEOUT = 90


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          timeout=60, check=False).stdout


def sessions() -> str:
    """The host's iSCSI sessions (iscsiadm exits 21 when there is none)."""
    return subprocess.run(["iscsiadm", "-m", "session"], capture_output=True, text=True,
                          timeout=30, check=False).stdout


@pytest.fixture(scope="module")
def workdir():
    require(shutil.which("virsh") is not None and bool(virsh("version").strip()),
            "libvirtd with qemu:///system")
    require(tgtd_available(), "tgtd (iSCSI target)")
    path = Path(tempfile.mkdtemp(prefix="virtkit-hostiscsi-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def luns(workdir):
    (workdir / "luns").mkdir()
    factory = TargetFactory(workdir / "luns", os.environ.get("VIRTKIT_TEST_ISCSI_PORTAL",
                                                             "127.0.0.1:3260"))
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def driver(workdir):
    conf = build_conf(overrides={"state_path": str(workdir / "state"), "host": "hostiscsi"})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", URI, group="libvirt")
    conf.set_override("virt_type", os.environ.get("VIRTKIT_TEST_VIRT_TYPE", "auto"),
                      group="libvirt")
    conf.set_override("iscsi_attach", "host", group="libvirt")
    drv = LibvirtDriver(conf)
    drv.init_host(host="hostiscsi")
    yield drv
    drv.cleanup_host(host="hostiscsi")


def _bdm(lun, mountpoint: str) -> BlockDevice:
    return BlockDevice(VolumeConnection.from_connection_info(lun.connection_info()), mountpoint)


def _console(driver, instance, pattern: str) -> str:
    import time

    deadline = time.monotonic() + BOOT_TIMEOUT
    out = ""
    while time.monotonic() < deadline:
        out = driver.get_console_output(instance=instance, max_bytes=1 << 20)
        if re.search(pattern, out):
            return out
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} not on the console within {BOOT_TIMEOUT}s:\n{out[-3000:]}")


def test_host_mode_attach_at_spawn_hot_attach_detach_and_destroy(driver, luns):
    image = ImageRef(env("VIRTKIT_TEST_DISK"), kernel=env("VIRTKIT_TEST_KERNEL"),
                     ramdisk=env("VIRTKIT_TEST_RAMDISK"))
    initiator = driver.get_volume_connector().initiator  # os-brick's connector properties
    lun = luns.create(size_mb=64, chap=True, initiators=[initiator])
    extra = luns.create(size_mb=32, chap=True, initiators=[initiator])
    uid = str(uuid.uuid4())
    inst = Instance(uuid=uid, name=f"vk-hostiscsi-{uid[:6]}", flavor=Flavor("tiny", 1, 128, 1))
    bdm, bdm_extra = _bdm(lun, "/dev/vdb"), _bdm(extra, "/dev/vdc")
    driver.spawn(instance=inst, image=image, block_devices=[bdm])
    try:
        out = _console(driver, inst, r"VIRTKIT-DISKS-END")
        assert f"name=vdb sectors={lun.size_bytes // 512}" in out
        assert lun.iqn in sessions()
        dumped = virsh("dumpxml", uid)
        disk = next(d for d in xml.Domain.from_xml(dumped).disks if d.target_dev == "vdb")
        assert disk.source_type == "block" and stat.S_ISBLK(os.stat(disk.source_path).st_mode)
        assert lun.password not in dumped and uid not in virsh("secret-list")

        driver.attach_volume(instance=inst, block_device=bdm_extra)
        _console(driver, inst, rf"name=vdc sectors={extra.size_bytes // 512}")
        assert re.search(r"^\s*vdc\s", virsh("domblklist", uid), re.M)
        driver.detach_volume(instance=inst, block_device=bdm_extra)
        assert not re.search(r"^\s*vdc\s", virsh("domblklist", uid), re.M)
        assert extra.iqn not in sessions()
    finally:
        driver.destroy(instance=inst, block_devices=[bdm, bdm_extra])
    assert lun.iqn not in sessions()
    assert uid not in virsh("list", "--all", "--uuid")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # nothing left holding the password
        with contextlib.suppress(OSError):
            assert lun.password.encode() not in cmdline.read_bytes()
