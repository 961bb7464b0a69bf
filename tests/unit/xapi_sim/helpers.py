"""Helpers for the simulator's tests: records as Nova built them, waits, failures."""

from __future__ import annotations

import time
from typing import Any

import pytest

XenAPI = pytest.importorskip("XenAPI")

PASSWORD = "s3cret-pw"
MiB = 1024 * 1024


def failure(fn, *args, **kwargs) -> list[str]:
    """The ErrorDescription of a call that must fail."""
    with pytest.raises(XenAPI.Failure) as info:
        fn(*args, **kwargs)
    return info.value.details


def vm_record(name: str = "inst-1", memory_mb: int = 256, vcpus: int = 1, **extra: Any) -> dict:
    """A full VM.create record, ints as strings, as Nova sent it (research §2.3)."""
    mem = str(memory_mb * MiB)
    rec = {
        "name_label": name, "name_description": "", "user_version": "0",
        "is_a_template": False, "affinity": "OpaqueRef:NULL",
        "memory_static_min": "0", "memory_static_max": mem, "memory_dynamic_min": mem,
        "memory_dynamic_max": mem, "VCPUs_max": str(vcpus), "VCPUs_at_startup": str(vcpus),
        "VCPUs_params": {}, "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart", "actions_after_crash": "destroy",
        "PV_bootloader": "pygrub", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
        "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "",
        "HVM_boot_params": {}, "platform": {"acpi": "true", "apic": "true", "pae": "true"},
        "PCI_bus": "", "recommendations": "", "other_config": {"virtkit_uuid": name},
        "xenstore_data": {}, "blocked_operations": {}, "tags": [],
    }
    rec.update(extra)
    return rec


def default_sr(x) -> str:
    return x.pool.get_default_SR(x.pool.get_all()[0])


def new_vdi(x, sr: str | None = None, size: int = 1 << 30, name: str = "disk") -> str:
    return x.VDI.create({
        "name_label": name, "name_description": "", "SR": sr or default_sr(x),
        "virtual_size": str(size), "type": "User", "sharable": False, "read_only": False,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    })


def vbd_record(vm: str, vdi: str, userdevice: str = "0", bootable: bool = True) -> dict:
    return {"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": bootable,
            "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}}


def network(x) -> str:
    return next(iter(x.network.get_all_records_where('field "bridge" = "xenbr0"')))


def make_vm(x, name: str = "inst-1", **extra: Any) -> tuple[str, str, str]:
    """A halted VM with a root disk and one VIF: (vm, vbd, vif)."""
    vm = x.VM.create(vm_record(name, **extra))
    vbd = x.VBD.create(vbd_record(vm, new_vdi(x)))
    vif = x.VIF.create({"device": "0", "network": network(x), "VM": vm, "MAC": "",
                        "MTU": "1500", "other_config": {}, "qos_algorithm_type": "",
                        "qos_algorithm_params": {}})
    return vm, vbd, vif


def wait_task(x, task: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) in ("pending", "cancelling"):
        assert time.monotonic() < deadline, "task did not finish"
        time.sleep(0.01)
    return x.task.get_status(task)
