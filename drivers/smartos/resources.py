"""What this global zone offers: `sysinfo`, `zpool list` and the VMs present, as
HostResources (only virtkit's VMs count as instances). No commands."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from virt.model import HostResources

GIB = 1024**3

#: `vmadm list` fields the resource count reads (alias last: it may hold ':').
FIELDS = ("uuid", "state", "brand", "vcpus", "cpu_cap", "max_physical_memory", "ram")
#: VM states that hold their memory and CPUs.
HOLDING = frozenset({"running", "provisioning", "stopping", "ready", "shutting_down"})


def host_resources(sysinfo: Mapping[str, Any], pool: Mapping[str, int],
                   ours: Iterable[Mapping[str, str]], *, host: str,
                   zpool: str) -> HostResources:
    """Capacity from sysinfo and the zpool; use from virtkit's VMs in `ours` (list rows):
    memory and vCPUs of those that run, disk from the pool's allocation."""
    vcpus_used = memory_used = 0
    for row in ours:
        if row.get("state") not in HOLDING:
            continue
        hvm = row.get("brand") in ("bhyve", "kvm")
        # An OS zone's vCPUs are its cpu_cap (100 per vCPU, as spec.payload sets it).
        vcpus_used += _int(row.get("vcpus")) if hvm else max(1, -(-_int(row.get("cpu_cap")) // 100))
        memory_used += _int(row.get("ram") if hvm else row.get("max_physical_memory"))
    cores = _int(sysinfo.get("CPU Total Cores"))
    total_gb = int(pool.get("size", 0)) // GIB
    free_gb = int(pool.get("free", 0)) // GIB
    version = str(sysinfo.get("Live Image") or "")
    cpu_info = {
        "arch": "x86_64",
        "cpu_type": sysinfo.get("CPU Type"),
        "sockets": sysinfo.get("CPU Socket Count") or sysinfo.get("CPU Count"),
        "live_image": version,
        "zpool": zpool,
        "vm_capable": bool(sysinfo.get("VM Capable")),
        "bhyve_capable": bool(sysinfo.get("Bhyve Capable")),
    }
    instances = [("x86_64", "smartos", "exe")]
    if cpu_info["bhyve_capable"] or cpu_info["vm_capable"]:
        instances.append(("x86_64", "bhyve" if cpu_info["bhyve_capable"] else "kvm", "hvm"))
    return HostResources(
        vcpus=cores,
        memory_mb=_int(sysinfo.get("MiB of Memory")),
        local_gb=total_gb,
        vcpus_used=vcpus_used,
        memory_mb_used=memory_used,
        local_gb_used=int(pool.get("allocated", 0)) // GIB,
        hypervisor_type="smartos",
        hypervisor_version=version_number(version),
        hypervisor_hostname=str(sysinfo.get("Hostname") or host),
        cpu_info=json.dumps(cpu_info, sort_keys=True),
        disk_available_least=free_gb,
        supported_instances=tuple(instances),
    )


def version_number(live_image: str) -> int:
    """'20240307T000552Z' -> 20240307 (the platform's build date); 0 if unknown."""
    digits = live_image[:8]
    return int(digits) if digits.isdigit() else 0


def _int(value: Any) -> int:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return 0
