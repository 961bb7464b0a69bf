"""The driver against real libvirtd + QEMU booting the tiny guest, with tgtd iSCSI LUNs.

One guest is booted for the module and reused (TCG boots are slow); tests run in file order
and the libvirtd-restart test comes last.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import libvirt
import pytest

from drivers.libvirt import xml
from tests.iscsi_target import tgtd_available
from tests.libvirt_helpers import (
    libvirt_driver,
    libvirt_up,
    lun_device,
    lun_factory,
    qemu_workdir,
    tiny_guest_image,
    virsh,
    wait_console,
)
from tests.testbed import require
from virt.errors import (
    HypervisorUnavailable,
    ImageNotFound,
    InstanceNotFound,
    InvalidRequest,
    VolumeAuthError,
    VolumeNotFound,
    VolumeUnreachable,
)
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance, PowerState

pytestmark = [pytest.mark.libvirt_qemu, pytest.mark.iscsi, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
# Long enough that a soft reboot's stop + start falls inside it on a loaded 2-core machine.
STOPPED_DELAY = 2.0


def leftovers(uid: str) -> list[str]:
    """Anything of instance `uid` still on the host: domain, secret."""
    found = []
    if uid in virsh("list", "--all", "--uuid"):
        found.append("domain")
    if uid in virsh("secret-list"):
        found.append("secret")
    return found


@pytest.fixture(scope="module")
def workdir():
    require(libvirt_up(), "libvirtd with qemu:///system")
    require(tgtd_available(), "tgtd (iSCSI target)")
    with qemu_workdir("virtkit-libvirt-") as path:
        yield path


@pytest.fixture(scope="module")
def luns(workdir):
    with lun_factory(workdir) as factory:
        yield factory


@pytest.fixture(scope="module")
def image():
    return tiny_guest_image()


@pytest.fixture(scope="module")
def driver(workdir):
    with libvirt_driver(workdir, "qemu-test", stopped_event_delay=STOPPED_DELAY) as drv:
        yield drv


def _instance(name: str, image: ImageRef | None = None) -> Instance:
    uid = str(uuid.uuid4())
    return Instance(uuid=uid, name=f"{name}-{uid[:6]}", flavor=Flavor("tiny", 1, 128, 1),
                    image=image)


class Recorder:
    """Lifecycle events of one instance with their arrival times, while registered."""

    def __init__(self, driver, uuid: str) -> None:
        self.driver, self.uuid = driver, uuid
        self.events: list[tuple[float, Transition]] = []

    def __call__(self, event) -> None:
        if event.instance_uuid == self.uuid:
            self.events.append((time.monotonic(), event.transition))

    def __enter__(self) -> Recorder:
        self.driver.register_event_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        self.driver.unregister_event_listener(self)

    def transitions(self) -> list[Transition]:
        return [t for _, t in self.events]

    def wait(self, transition: Transition, count: int = 1, timeout: float = 30) -> float:
        """Arrival time of the `count`-th `transition`; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = [at for at, t in self.events if t is transition]
            if len(times) >= count:
                return times[count - 1]
            time.sleep(0.05)
        raise AssertionError(f"{transition} x{count} not within {timeout}s: {self.events}")


@pytest.fixture(scope="module")
def initiator(driver) -> str:
    """The connector's initiator name: the only one the test LUNs bound to it admit."""
    return driver.get_volume_connector().initiator


@pytest.fixture(scope="module")
def guest(driver, image, luns, initiator):
    """The shared guest, spawned with a 64 MiB CHAP LUN at /dev/vdb (connector's IQN only)."""
    lun = luns.create(size_mb=64, chap=True, initiators=[initiator])
    inst = _instance("vk-qemu", image=image)
    driver.spawn(instance=inst, block_devices=[lun_device(lun, "/dev/vdb")])
    yield inst, lun
    driver.destroy(instance=inst)
    assert leftovers(inst.uuid) == []


def test_boot_shows_marker_and_the_chap_lun_attached_at_spawn(driver, guest, initiator):
    inst, lun = guest
    out = wait_console(driver, inst, r"VIRTKIT-DISKS-END")
    assert "VIRTKIT-GUEST-UP" in out
    assert "name=vda" in out and "marker=VIRTKIT-ROOT-DISK" in out
    # The LUN admits only the connector's initiator: QEMU logged in with that name.
    assert f"name=vdb sectors={lun.size_bytes // 512}" in out
    assert f"<iqn name='{initiator}'/>" in virsh("dumpxml", inst.uuid)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    # The CHAP password is in a libvirt secret only: not in the XML, not on QEMU's argv.
    assert lun.password not in virsh("dumpxml", inst.uuid)
    assert f"virtkit-{inst.uuid}-vdb" in virsh("secret-list")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert lun.password.encode() not in cmdline.read_bytes()


def test_hot_attach_and_detach(driver, guest, luns, initiator):
    inst, _ = guest
    wait_console(driver, inst, r"VIRTKIT-DISKS-END")
    lun = luns.create(size_mb=32, chap=True, initiators=[initiator])
    bdm = lun_device(lun, "/dev/vdc")
    driver.attach_volume(instance=inst, block_device=bdm)
    wait_console(driver, inst, rf"name=vdc sectors={lun.size_bytes // 512}")
    assert re.search(r"^\s*vdc\s", virsh("domblklist", inst.uuid), re.M)
    assert f"virtkit-{inst.uuid}-vdc" in virsh("secret-list")
    driver.detach_volume(instance=inst, block_device=bdm)
    assert not re.search(r"^\s*vdc\s", virsh("domblklist", inst.uuid), re.M)
    assert not re.search(r"^\s*vdc\s", virsh("domblklist", inst.uuid, "--inactive"), re.M)
    assert f"virtkit-{inst.uuid}-vdc" not in virsh("secret-list")


def test_a_lun_for_the_connector_refuses_qemus_default_initiator(driver, guest, luns,
                                                                initiator):
    """Negative control: without <initiator> in the disk, QEMU's own IQN is refused."""
    inst, _ = guest
    lun = luns.create(size_mb=8, initiators=[initiator])
    host, _, port = lun.portal.rpartition(":")
    disk = xml.Disk(target_dev="vdf", source_type="network", protocol="iscsi",
                    source_name=f"{lun.iqn}/{lun.lun}", hosts=[(host, int(port))],
                    driver_type="raw")
    dom = driver.connection.connection().lookupByUUIDString(inst.uuid)
    with pytest.raises(libvirt.libvirtError):
        dom.attachDeviceFlags(xml.to_text(disk.to_element(), "disk"),
                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert not re.search(r"^\s*vdf\s", virsh("domblklist", inst.uuid), re.M)


def test_detach_from_a_booting_guest_is_requested_again(driver, image, luns):
    # A guest still booting drops the first hot-unplug request; the driver repeats it.
    lun = luns.create(size_mb=16, chap=True)
    inst = _instance("vk-early", image=image)
    driver.spawn(instance=inst)
    try:
        bdm = lun_device(lun, "/dev/vdb")
        driver.attach_volume(instance=inst, block_device=bdm)
        driver.detach_volume(instance=inst, block_device=bdm)
        assert not re.search(r"^\s*vdb\s", virsh("domblklist", inst.uuid), re.M)
        assert f"virtkit-{inst.uuid}-vdb" not in virsh("secret-list")
    finally:
        driver.destroy(instance=inst)
    assert leftovers(inst.uuid) == []


def test_pause_suspend_and_snapshot(driver, guest, workdir):
    inst, _ = guest
    driver.pause(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.PAUSED
    driver.unpause(instance=inst)
    driver.suspend(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.SUSPENDED
    driver.resume(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    snap = driver.snapshot(instance=inst, name=f"snap-{inst.uuid[:8]}")
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    info = subprocess.run(["qemu-img", "info", snap.ref], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert "backing file" not in info
    assert snap.kernel and snap.ramdisk


def test_reboot_soft_then_hard(driver, guest):
    inst, _ = guest
    log = driver.get_console_output(instance=inst, max_bytes=1 << 20)
    before, offs = log.count("VIRTKIT-GUEST-UP"), log.count("VIRTKIT-GUEST-POWEROFF")
    with Recorder(driver, inst.uuid) as recorder:
        driver.reboot(instance=inst, timeout=30)
        out = wait_console(driver, inst, "VIRTKIT-GUEST-UP", count=before + 1)
        # The guest answered ACPI: a soft reboot, not the hard fallback.
        assert out.count("VIRTKIT-GUEST-POWEROFF") == offs + 1
        driver.reboot(instance=inst, hard=True)
        out = wait_console(driver, inst, "VIRTKIT-GUEST-UP", count=before + 2)
        recorder.wait(Transition.STARTED, count=2)
        time.sleep(STOPPED_DELAY + 0.5)  # a held STOPPED would have been emitted by now
    # Each reboot's stop is followed by a start within the delay: reported as STARTED only.
    assert Transition.STOPPED not in recorder.transitions(), recorder.events
    assert out.rstrip().endswith("VIRTKIT-DISKS-END count=2") or "VIRTKIT-DISKS-BEGIN" in out


def test_bad_input_leaves_nothing(driver, image, luns, workdir, tmp_path):
    lun = luns.create(size_mb=16, chap=True)
    # Restricted to another initiator: the probe, logging in as the connector's, is refused.
    other = luns.create(size_mb=8, initiators=["iqn.2024-01.org.virtkit.test:someone-else"])
    instances = workdir / "state" / "instances"
    cases = [
        (ImageNotFound, dict(image=ImageRef(str(tmp_path / "no-such.qcow2")))),
        (InvalidRequest, dict(block_devices=[lun_device(lun, "/dev/vdb", target_iqn=None)])),
        (VolumeAuthError, dict(block_devices=[lun_device(lun, "/dev/vdb", auth_password="wrong-pw")])),
        (VolumeUnreachable, dict(block_devices=[lun_device(lun, "/dev/vdb",
                                                     target_portal="127.0.0.1:9")])),
        (VolumeNotFound, dict(block_devices=[lun_device(other, "/dev/vdb")])),
    ]
    for error, kwargs in cases:
        inst = _instance("vk-bad", image=kwargs.pop("image", image))
        with pytest.raises(error) as caught:
            driver.spawn(instance=inst, **kwargs)
        assert "wrong-pw" not in str(caught.value) and lun.password not in str(caught.value)
        assert leftovers(inst.uuid) == [], error
        assert not (instances / inst.uuid).exists()
    ghost = _instance("vk-ghost")
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=ghost)
    with pytest.raises(InstanceNotFound):
        driver.attach_volume(instance=ghost, block_device=lun_device(lun, "/dev/vdd"))
    assert leftovers(ghost.uuid) == []


def test_power_off_reports_clean_shutdown(driver, guest):
    inst, _ = guest
    wait_console(driver, inst, "VIRTKIT-DISKS-END")
    with Recorder(driver, inst.uuid) as recorder:
        result = driver.power_off(instance=inst, timeout=30, retry_interval=5)
        returned = time.monotonic()
        assert result.clean and not result.forced
        assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
        # A real shutdown is reported, once stopped_event_delay has passed without a start
        # (power_off returns within ~0.1 s of the stop: its state poll).
        arrived = recorder.wait(Transition.STOPPED, timeout=STOPPED_DELAY + 10)
        assert arrived - returned >= STOPPED_DELAY - 0.3, recorder.events
    driver.power_on(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING


def test_a_guest_ignoring_acpi_is_rebooted_hard_and_forced_off(driver, image, caplog):
    # Booted with acpi=off, the kernel ignores the power button: every ACPI request is lost.
    deaf = ImageRef(image.ref, kernel=image.kernel, ramdisk=image.ramdisk,
                    kernel_cmdline="console=ttyS0 acpi=off")
    inst = _instance("vk-noacpi", image=deaf)
    driver.spawn(instance=inst)
    try:
        wait_console(driver, inst, "VIRTKIT-DISKS-END")
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="drivers.libvirt.driver"):
            driver.reboot(instance=inst, timeout=3)
        assert time.monotonic() - began >= 3
        assert any("rebooting it hard" in r.getMessage() for r in caplog.records)
        out = wait_console(driver, inst, "VIRTKIT-GUEST-UP", count=2)
        assert "VIRTKIT-GUEST-POWEROFF" not in out
        wait_console(driver, inst, "VIRTKIT-DISKS-END", count=2)
        result = driver.power_off(instance=inst, timeout=2, retry_interval=1)
        assert result.forced and not result.clean and result.duration_s >= 2
        assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
        # timeout=0: no ACPI request at all, the plug is pulled at once.
        driver.power_on(instance=inst)
        result = driver.power_off(instance=inst, timeout=0)
        assert result.forced and not result.clean and result.duration_s < 2
        assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
    finally:
        driver.destroy(instance=inst)
    assert leftovers(inst.uuid) == []


def _libvirtd_pids() -> list[int]:
    out = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    return [int(p) for p in out.split()]


def test_libvirtd_restart_is_survived(driver, guest):
    inst, _ = guest
    events: list = []
    paused = threading.Event()

    def listener(event):
        if event.instance_uuid == inst.uuid:
            events.append(event.transition)
            if event.transition is Transition.PAUSED:
                paused.set()

    driver.register_event_listener(listener)
    try:
        reconnects = driver.connection.reconnects
        for pid in _libvirtd_pids():
            os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while _libvirtd_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Never "no instances", "shut down" or UNKNOWN: every call raises.
        with pytest.raises(HypervisorUnavailable):
            driver.list_instances()
        with pytest.raises(HypervisorUnavailable):
            driver.instance_exists(instance=inst)
        with pytest.raises(HypervisorUnavailable):
            driver.get_info(instance=inst)
        subprocess.run([str(ROOT / "scripts" / "testbed"), "up", "libvirt"], check=True,
                       timeout=180, capture_output=True)
        deadline = time.monotonic() + 30
        while driver.connection.reconnects == reconnects and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.connection.reconnects > reconnects, "the driver did not reconnect by itself"
        assert inst.name in driver.list_instances()
        assert driver.get_info(instance=inst).state is PowerState.RUNNING
        # Events flow again on the new connection.
        driver.pause(instance=inst)
        assert paused.wait(10), f"no PAUSED event after the restart: {events}"
        driver.unpause(instance=inst)
    finally:
        driver.unregister_event_listener(listener)
