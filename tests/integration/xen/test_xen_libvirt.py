"""The libvirt driver with virt_type = xen on the nested Xen: a real PV guest through libxl.

dom0's libvirtd (libxl driver) is reached as VIRTKIT_TEST_XEN_URI (xen+tcp to 127.0.0.1).
The driver's instances_path and images_path live in VIRTKIT_TEST_XEN_SHARE, which dom0 mounts
at the same path, so the qcow2 overlay, kernel and ramdisk the driver makes on the host are
what libxl boots. Every state is checked in dom0 with `xl list`, not through the driver.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from xentb import dom0

from tests.libvirt_helpers import libvirt_driver, wait_console
from tests.testbed import env, require
from virt.driver import Capability
from virt.errors import InstanceNotFound
from virt.model import Flavor, ImageRef, Instance, PowerState

pytestmark = [pytest.mark.slow]
#: A PV guest's boot under TCG, nested: ~5-15 s; twice that on a busy machine.
BOOT = 120.0


@pytest.fixture(scope="module")
def xen_uri() -> str:
    if os.environ.get("VIRTKIT_TESTBED_XEN") == "0":
        pytest.skip("the nested Xen is left out of the test bed (VIRTKIT_TESTBED_XEN=0)")
    uri = env("VIRTKIT_TEST_XEN_URI")
    require(uri.startswith("xen+tcp://127.0.0.1:"), "VIRTKIT_TEST_XEN_URI (xen+tcp to loopback)")
    env("VIRTKIT_TEST_XEN_DOM0")
    return uri


@pytest.fixture(scope="module")
def share(xen_uri) -> Path:
    return Path(env("VIRTKIT_TEST_XEN_SHARE"))


@pytest.fixture(scope="module")
def pv_image() -> ImageRef:
    return ImageRef(env("VIRTKIT_TEST_XEN_PV_DISK"), disk_format="qcow2",
                    kernel=env("VIRTKIT_TEST_XEN_PV_KERNEL"),
                    ramdisk=env("VIRTKIT_TEST_XEN_PV_RAMDISK"), kernel_cmdline="console=hvc0")


@pytest.fixture(scope="module")
def driver(xen_uri, share):
    workdir = Path(tempfile.mkdtemp(prefix="libvirt-xen-", dir=share))
    try:
        with libvirt_driver(workdir, "xen-test", uri=xen_uri, virt_type="xen",
                            xen_console_dir=str(share / "console"),
                            stopped_event_delay=0.5) as drv:
            yield drv
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def xl_domains() -> dict[str, int]:
    """{name: domid} of the domains Xen runs now, from `xl list` in dom0."""
    for _ in range(5):  # 255: the command service's connection dropped (a busy dom0), retry
        rc, out = dom0("xl list")
        if rc != 255:
            break
        time.sleep(1)
    assert rc == 0, out
    found = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6:
            found[fields[0]] = int(fields[1])
    return found


def wait_xl(name: str, present: bool, timeout: float = BOOT) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        domid = xl_domains().get(name)
        if (domid is not None) == present:
            return domid
        assert time.monotonic() < deadline, f"{name} {'not ' if present else ''}in xl list"
        time.sleep(0.5)


def running(driver, instance: Instance) -> None:
    assert driver.get_info(instance=instance).state is PowerState.RUNNING


def test_pv_guest_lifecycle_through_libxl(driver, pv_image):
    uid = str(uuid.uuid4())
    inst = Instance(uuid=uid, name=f"vk-xen-{uid[:6]}", flavor=Flavor("pv", 1, 128, 1),
                    image=pv_image)
    assert driver.connection.connection().getType() == "Xen"
    assert Capability.VOLUME_ATTACH not in driver.connection_capabilities
    try:
        started = time.monotonic()
        driver.spawn(instance=inst)
        running(driver, inst)
        first = wait_xl(inst.name, True)
        out = wait_console(driver, inst, r"VIRTKIT-PV up .*xvda", timeout=BOOT)
        print(f"PV guest up through libvirt in {time.monotonic() - started:.1f}s")
        assert driver.get_info(instance=inst).internal_id == str(first)
        xml = driver.connection.connection().lookupByUUIDString(uid).XMLDesc(0)
        assert re.search(r"<type arch=.x86_64. machine=.xenpv.>(xen|linux)</type>", xml), xml
        assert "<target dev='xvda' bus='xen'/>" in xml

        driver.reboot(instance=inst)  # soft: the guest's own poweroff, then a start
        wait_console(driver, inst, r"VIRTKIT-PV up", count=out.count("VIRTKIT-PV up") + 1)
        running(driver, inst)
        second = wait_xl(inst.name, True)
        assert second != first  # a new domain

        driver.reboot(instance=inst, hard=True)
        running(driver, inst)
        third = wait_xl(inst.name, True)
        assert third not in (first, second)

        result = driver.power_off(instance=inst, timeout=60)
        assert not result.forced  # the guest powered itself off on Xen's request
        assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
        wait_xl(inst.name, False, timeout=10)

        driver.power_on(instance=inst)
        running(driver, inst)
        wait_xl(inst.name, True)
        assert "VIRTKIT-PV powering off" in driver.get_console_output(instance=inst)
    finally:
        driver.destroy(instance=inst)
    wait_xl(inst.name, False, timeout=10)
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=inst)
    assert inst.name not in driver.list_instances()
