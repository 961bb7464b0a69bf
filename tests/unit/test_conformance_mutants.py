"""Mutants prove the conformance suite: drivers derived from the fake that each skip (or
half-do) one operation's work must fail the suite, on the operation they lie about.

Each mutant is installed as a third-party driver would be (a module and a `.dist-info` with a
`virtkit.compute_drivers` entry point on PYTHONPATH) and judged by the fake's observer, named
in its config, which reads the fake engine's state files without the driver.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conformance_helpers import (
    CHAP_VOLUME,
    FAKE_SAN,
    UNREACHABLE,
    VOLUME,
    install_drivers,
    run_suite,
)

MUTANTS_MODULE = '''
from drivers.fake import volumes
from drivers.fake.driver import FakeDriver
from virt.events import Transition


class _Mutant(FakeDriver):
    def _touch(self, instance):
        self.get_info(instance=instance)


class SnapshotOwnImage(_Mutant):
    def snapshot(self, *, instance, name):
        self._touch(instance)
        return instance.image


class SnapshotWithoutDisk(_Mutant):
    def snapshot(self, *, instance, name):
        image = super().snapshot(instance=instance, name=name)
        with self._hypervisor.transaction(instance.uuid) as txn:
            txn.images[image.ref]["files"] = {}
        return image


class RescueNoop(_Mutant):
    def rescue(self, *, instance, image, rescue_password=None):
        self._touch(instance)


class RescueWithoutDisk(_Mutant):
    def rescue(self, *, instance, image, rescue_password=None):
        super().rescue(instance=instance, image=image, rescue_password=rescue_password)
        self._mutate(instance, lambda record, _txn: record.update(disks=["rescue"]))


class UnrescueNoop(_Mutant):
    def unrescue(self, *, instance):
        self._touch(instance)


class InjectFileNoop(_Mutant):
    def inject_file(self, *, instance, path, contents):
        self._touch(instance)


class SetAdminPasswordNoop(_Mutant):
    def set_admin_password(self, *, instance, password):
        self._touch(instance)


class AttachVolumeNoop(_Mutant):
    def attach_volume(self, *, instance, block_device):
        self._touch(instance)


class ChapIgnored(_Mutant):
    def _check_block_device(self, bdm):
        volumes.check_block_device(bdm)


class DetachVolumeNoop(_Mutant):
    def detach_volume(self, *, instance, block_device):
        self._touch(instance)


class ConsoleEmpty(_Mutant):
    def get_console_output(self, *, instance, max_bytes=64 * 1024):
        self._touch(instance)
        return ""


class PowerOnRestarts(_Mutant):
    def power_on(self, *, instance, block_devices=()):
        if self.get_info(instance=instance).state.value == "running":
            super().reboot(instance=instance, hard=True)
        else:
            super().power_on(instance=instance, block_devices=block_devices)


class RebootNoop(_Mutant):
    def reboot(self, *, instance, hard=False, timeout=60):
        self._touch(instance)


class PauseClockRuns(_Mutant):
    def pause(self, *, instance):
        def change(record, _txn):
            if record["state"] != "running":
                return []
            record["state"] = "paused"
            return [Transition.PAUSED]
        self._mutate(instance, change)


class ResumeReboots(_Mutant):
    def resume(self, *, instance, block_devices=()):
        super().resume(instance=instance, block_devices=block_devices)
        super().reboot(instance=instance, hard=True)


class SpawnDropsBlockDevices(_Mutant):
    def spawn(self, *, instance, block_devices=(), vifs=(), admin_password=None,
              power_on=True):
        super().spawn(instance=instance, vifs=vifs, admin_password=admin_password,
                      power_on=power_on)


class SpawnDropsVifs(_Mutant):
    def spawn(self, *, instance, block_devices=(), vifs=(), admin_password=None,
              power_on=True):
        super().spawn(instance=instance, block_devices=block_devices,
                      admin_password=admin_password, power_on=power_on)


class SpawnDropsAdminPassword(_Mutant):
    def spawn(self, *, instance, block_devices=(), vifs=(), admin_password=None,
              power_on=True):
        super().spawn(instance=instance, block_devices=block_devices, vifs=vifs,
                      power_on=power_on)


class SpawnReplacesDisk(_Mutant):
    def spawn(self, *, instance, block_devices=(), vifs=(), admin_password=None,
              power_on=True):
        with self._hypervisor.transaction(instance.uuid) as txn:
            if txn.record is None:
                txn.disk = None
        super().spawn(instance=instance, block_devices=block_devices, vifs=vifs,
                      admin_password=admin_password, power_on=power_on)


class DestroyDropsDisks(_Mutant):
    def destroy(self, *, instance, block_devices=(), destroy_disks=True):
        super().destroy(instance=instance, block_devices=block_devices, destroy_disks=True)


class DiskPathWrong(_Mutant):
    def instance_disk_path(self, *, instance):
        return super().instance_disk_path(instance=instance) + ".elsewhere"
'''

#: mutant class -> the operation whose status must be "failed"
MUTANTS = {
    "SnapshotOwnImage": "snapshot",
    "SnapshotWithoutDisk": "snapshot",
    "RescueNoop": "rescue",
    "RescueWithoutDisk": "rescue",
    "UnrescueNoop": "unrescue",
    "InjectFileNoop": "inject_file",
    "SetAdminPasswordNoop": "set_admin_password",
    "AttachVolumeNoop": "attach_volume",
    "ChapIgnored": "attach_volume",
    "DetachVolumeNoop": "detach_volume",
    "ConsoleEmpty": "get_console_output",
    "PowerOnRestarts": "power_on",
    "RebootNoop": "reboot",
    "PauseClockRuns": "pause",
    "ResumeReboots": "resume",
    "SpawnDropsBlockDevices": "spawn",
    "SpawnDropsVifs": "spawn",
    "SpawnDropsAdminPassword": "spawn",
    "SpawnReplacesDisk": "spawn",
    "DestroyDropsDisks": "destroy",
    "DiskPathWrong": "instance_disk_path",
}

CONFIG = f"""
[DEFAULT]
compute_driver = {{driver}}
state_path = {{state}}

[fake]
{FAKE_SAN}

[conformance]
image_ref = cirros
observer = fake
rescue_image_ref = cirros-rescue
console_marker = login:
# The fake boots at once: a restart that has not happened in 3 s will not happen.
boot_timeout = 3
"""
#: The suite's options that exercise every capability the fake declares.
EVERYTHING = "\n".join((VOLUME, CHAP_VOLUME, UNREACHABLE)) + "\n"


def _entry_name(cls: str) -> str:
    return "vk_mut_" + "".join(f"_{c.lower()}" if c.isupper() else c for c in cls).lstrip("_")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_drivers(tmp_path_factory.mktemp("mutants-site"), "vk_mutants",
                           MUTANTS_MODULE, {_entry_name(cls): cls for cls in MUTANTS})


def _run(site: Path, tmp: Path, cls: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    driver = _entry_name(cls)
    work = tmp / driver
    config = CONFIG.format(driver=driver, state=work / "state") + EVERYTHING
    proc, column, _ = run_suite(site, work, driver, config, work / "matrix")
    return proc, column


@pytest.fixture(scope="module")
def verdicts(site, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess[str], dict]]:
    tmp = tmp_path_factory.mktemp("mutants")
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {cls: pool.submit(_run, site, tmp, cls) for cls in MUTANTS}
        return {cls: future.result() for cls, future in runs.items()}


@pytest.mark.parametrize("cls", list(MUTANTS))
def test_mutant_fails_the_suite_on_the_operation_it_lies_about(verdicts, cls):
    proc, column = verdicts[cls]
    op = MUTANTS[cls]
    assert proc.returncode == 1, f"{cls} passed the suite:\n{proc.stdout[-3000:]}"
    status = column["operations"][op]["status"]
    assert status == "failed", (
        f"{cls} lies about {op}, whose status is {status!r}:\n{proc.stdout[-3000:]}")
