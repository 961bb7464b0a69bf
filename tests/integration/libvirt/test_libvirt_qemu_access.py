"""On real libvirtd + QEMU: paths QEMU's user cannot read, and the resync after a reconnect.

A permission problem is not a lost connection: init_host refuses such paths up front, and a
disk that becomes unreadable later fails the spawn with AccessDenied naming the path, the
user and the fix, with no reconnect. Domain changes made while the driver's connection was
down are emitted once it is reopened.
"""

from __future__ import annotations

import time
import uuid

import libvirt
import pytest

from drivers.libvirt import resources
from tests.libvirt_helpers import (
    URI,
    libvirt_driver,
    libvirt_up,
    qemu_workdir,
    tiny_guest_image,
    virsh,
)
from tests.testbed import require
from virt.errors import AccessDenied, ConfigError, HypervisorUnavailable
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance

pytestmark = [pytest.mark.libvirt_qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def qemu_user():
    require(libvirt_up(), "libvirtd with qemu:///system")
    user = resources.qemu_user()
    require(user is not None and user.pw_uid != 0, "libvirtd running QEMU as its own user")
    return user


def _instance(name: str, image: ImageRef | None = None) -> Instance:
    uid = str(uuid.uuid4())
    return Instance(uuid=uid, name=f"{name}-{uid[:6]}", flavor=Flavor("tiny", 1, 128, 1),
                    image=image)


def test_init_host_refuses_an_images_path_qemus_user_cannot_traverse(qemu_user):
    with qemu_workdir("vk-access-") as work:
        private = work / "private"
        private.mkdir(mode=0o700)  # like /root, where the default state_path lies for root
        with pytest.raises(ConfigError) as caught, libvirt_driver(private, "access"):
            pass
    text = f"{caught.value.message} {caught.value.hint}"
    assert f"cannot traverse {private} " in text
    assert f"{qemu_user.pw_name} (uid {qemu_user.pw_uid})" in text
    assert "[libvirt] images_path" in text and "[DEFAULT] instances_path" in text
    assert "/var/lib/virtkit" in text


def test_an_unreadable_disk_is_access_denied_not_a_lost_connection(qemu_user, caplog):
    inst = _instance("vk-access", image=tiny_guest_image())
    with qemu_workdir("vk-access-") as work, libvirt_driver(work, "access") as driver:
        reconnects = driver.connection.reconnects
        (work / "state").chmod(0o700)  # after init_host: QEMU's user is locked out
        caplog.set_level("WARNING")
        try:
            with pytest.raises(AccessDenied) as caught:
                driver.spawn(instance=inst)
        finally:
            (work / "state").chmod(0o711)
        error = caught.value
        assert not isinstance(error, HypervisorUnavailable)
        disk = work / "state" / "instances" / inst.uuid / "disk"
        assert str(disk) in error.message
        assert f"QEMU runs as {qemu_user.pw_name} (uid {qemu_user.pw_uid})" in error.hint
        assert "[libvirt] images_path" in error.hint and "/var/lib/virtkit" in error.hint
        assert "libvirtd is running" not in f"{error.message} {error.hint}"
        assert driver.connection.reconnects == reconnects
        assert not any("reconnected" in r.getMessage() for r in caplog.records)
        # the rollback removed what the spawn made
        assert inst.uuid not in virsh("list", "--all", "--uuid")
        assert not disk.parent.exists()
        assert inst.name not in driver.list_instances()


def test_changes_while_the_connection_was_down_are_emitted_after_the_reconnect(qemu_user):
    inst = _instance("vk-resync", image=tiny_guest_image())
    with qemu_workdir("vk-resync-") as work, \
            libvirt_driver(work, "resync", stopped_event_delay=0.5) as driver:
        driver.spawn(instance=inst)
        events: list = []
        driver.register_event_listener(
            lambda e: events.append(e.transition) if e.instance_uuid == inst.uuid else None)
        other = libvirt.open(URI)
        try:
            reconnects = driver.connection.reconnects
            manager = driver.connection
            # The connection is lost (dropped) and held down while the guest is paused
            # behind the driver's back: no event can reach it.
            with manager._lock:
                manager._drop(manager.connection())
                other.lookupByUUIDString(inst.uuid).suspend()
                time.sleep(0.5)
            deadline = time.monotonic() + 20
            while Transition.PAUSED not in events and time.monotonic() < deadline:
                time.sleep(0.1)
            assert driver.connection.reconnects > reconnects
            assert events == [Transition.PAUSED], events
            # stopped behind its back the same way: STOPPED, after stopped_event_delay
            with manager._lock:
                manager._drop(manager.connection())
                other.lookupByUUIDString(inst.uuid).destroy()
            deadline = time.monotonic() + 20
            while Transition.STOPPED not in events and time.monotonic() < deadline:
                time.sleep(0.1)
            assert events == [Transition.PAUSED, Transition.STOPPED], events
        finally:
            other.close()
            driver.destroy(instance=inst)
