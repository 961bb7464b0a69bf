"""What this host offers: dockerd's `info` and the containers holding resources, as
HostResources. No docker calls."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from drivers.docker import spec
from virt.model import HostResources

#: Container states that hold the flavor's resources (docker ORs the status filter's values).
HOLDING = ("running", "paused", "restarting")
GIB = 1024**3


def host_resources(
    info: Mapping[str, Any], holding: Iterable[Mapping[str, Any]], *, host: str,
    base_url: str, api_version: str, root_disk_limit: bool,
) -> HostResources:
    """Capacity from `docker info`; use from the labels of the containers in `holding`
    (a paused or restarting container keeps its memory: it counts as used)."""
    vcpus_used = memory_used = 0
    for entry in holding:
        labels = entry.get("Labels") or {}
        vcpus_used += int(labels.get(spec.LABEL_VCPUS, 0) or 0)
        memory_used += int(labels.get(spec.LABEL_MEMORY_MB, 0) or 0)
    total_gb, free_gb = root_disk_space(base_url, str(info.get("DockerRootDir", "")))
    arch = _arch(str(info.get("Architecture") or platform.machine()))
    cpu_info = {
        "arch": arch,
        "ncpu": info.get("NCPU"),
        "docker_version": info.get("ServerVersion"),
        "api_version": api_version,
        "storage_driver": info.get("Driver"),
        "root_disk_limit": root_disk_limit,
        "swap_limit": bool(info.get("SwapLimit")),
    }
    return HostResources(
        vcpus=int(info.get("NCPU") or 0),
        memory_mb=int(info.get("MemTotal") or 0) // spec.MIB,
        local_gb=total_gb,
        vcpus_used=vcpus_used,
        memory_mb_used=memory_used,
        local_gb_used=max(total_gb - free_gb, 0),
        hypervisor_type="docker",
        hypervisor_version=version_number(str(info.get("ServerVersion") or "")),
        hypervisor_hostname=str(info.get("Name") or host),
        cpu_info=json.dumps(cpu_info, sort_keys=True),
        disk_available_least=free_gb,
        supported_instances=((arch, "docker", "exe"),),
    )


def root_disk_space(base_url: str, root_dir: str) -> tuple[int, int]:
    """(total, free) GB of the daemon's data directory, when it is on this machine."""
    if urlparse(base_url).scheme not in ("unix", "") or not root_dir:
        return 0, 0
    try:
        stat = os.statvfs(root_dir)
    except OSError:
        return 0, 0
    return stat.f_blocks * stat.f_frsize // GIB, stat.f_bavail * stat.f_frsize // GIB


def _arch(name: str) -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def version_number(version: str) -> int:
    """'20.10.24+dfsg1' -> 20010024 (Nova's major*1e6 + minor*1e3 + patch)."""
    numbers = []
    for part in version.split("+")[0].split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    numbers += [0] * (3 - len(numbers))
    return numbers[0] * 1_000_000 + numbers[1] * 1_000 + numbers[2]
