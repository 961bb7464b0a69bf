"""The driver on a remote URI: qemu+ssh:// through the test bed's sshd to its real libvirtd.

`scripts/testbed up` runs a private sshd on 127.0.0.1 and exports VIRTKIT_TEST_SSH_URI
(key login, the host key checked, virt-ssh-helper on the far side). The "remote" host is
this one, so instances_path and images_path are the same paths on both ends: the driver
writes disks, kernel and console log locally and the remote libvirtd finds them there.
One tiny-guest boot.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from tests.libvirt_helpers import (
    libvirt_driver,
    qemu_workdir,
    tiny_guest_image,
    virsh,
    wait_console,
)
from tests.testbed import env, require
from virt.events import Transition
from virt.model import Flavor, Instance, PowerState

pytestmark = [pytest.mark.libvirt_qemu, pytest.mark.slow]
STOPPED_DELAY = 0.5


def ssh_children() -> list[str]:
    """Command lines of this process's ssh children (libvirt's ssh transport)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != os.getpid():
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if any(Path(a.decode(errors="replace")).name == "ssh" for a in argv[:1]):
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


@pytest.fixture(scope="module")
def uri() -> str:
    value = env("VIRTKIT_TEST_SSH_URI")
    require(value.startswith("qemu+ssh://"), "VIRTKIT_TEST_SSH_URI (a qemu+ssh:// URI)")
    return value


@pytest.fixture(scope="module")
def workdir():
    with qemu_workdir("virtkit-remote-") as path:
        yield path


@pytest.fixture(scope="module")
def driver(uri, workdir):
    with libvirt_driver(workdir, "remote-test", uri=uri,
                        stopped_event_delay=STOPPED_DELAY) as drv:
        yield drv


class Recorder:
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.transitions: list[Transition] = []

    def __call__(self, event) -> None:
        if event.instance_uuid == self.uuid:
            self.transitions.append(event.transition)

    def wait(self, transition: Transition, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while transition not in self.transitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"{transition} not within {timeout}s: {self.transitions}")
            time.sleep(0.05)


def test_a_guest_over_qemu_ssh(driver, uri, workdir):
    image = tiny_guest_image()
    uid = str(uuid.uuid4())
    inst = Instance(uuid=uid, name=f"vk-remote-{uid[:6]}", flavor=Flavor("tiny", 1, 128, 1),
                    image=image)
    # The driver's connection is the ssh transport (an ssh child of this process).
    assert driver.connection.connection().getURI() == uri
    assert any("127.0.0.1" in argv for argv in ssh_children()), ssh_children()
    recorder = Recorder(uid)
    driver.register_event_listener(recorder)
    try:
        driver.spawn(instance=inst)
        try:
            recorder.wait(Transition.STARTED)
            wait_console(driver, inst, "VIRTKIT-GUEST-UP")
            assert driver.get_info(instance=inst).state is PowerState.RUNNING
            assert inst.name in driver.list_instances()
            assert uid in driver.list_instance_uuids()
            # The domain is on the libvirtd the local socket reaches: one daemon, two paths.
            assert uid in virsh("list", "--uuid")
            resources = driver.get_available_resource()
            assert resources.hypervisor_type == "QEMU" and resources.vcpus >= 1

            result = driver.power_off(instance=inst, timeout=30, retry_interval=5)
            assert result.clean or result.forced, result
            recorder.wait(Transition.STOPPED, timeout=STOPPED_DELAY + 15)
            assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
        finally:
            driver.destroy(instance=inst)
    finally:
        driver.unregister_event_listener(recorder)
    assert uid not in virsh("list", "--all", "--uuid")
    assert not driver.instance_exists(instance=inst)
    assert inst.name not in driver.list_instances()
    assert not list(workdir.rglob(f"*{uid}*"))  # its directory, disks, console log
