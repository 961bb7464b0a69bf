"""The fake engine's instance records: what a JSON state file holds, and the power moves
that change it (start, stop, the console log they write)."""

from __future__ import annotations

import time
from typing import Any

from virt.model import ImageRef, Instance, PowerState

CONSOLE_MAX_LINES = 400

# States in which the guest has a live domain (running, or paused with its memory).
ALIVE = frozenset({PowerState.RUNNING.value, PowerState.PAUSED.value})


def new_instance(instance: Instance, image: ImageRef, state: PowerState) -> dict[str, Any]:
    """The state file of a new instance."""
    flavor = instance.flavor
    return {
        "uuid": instance.uuid,
        "name": instance.name,
        "host": instance.host,
        "flavor": {
            "name": flavor.name,
            "vcpus": flavor.vcpus,
            "memory_mb": flavor.memory_mb,
            "root_gb": flavor.root_gb,
            "ephemeral_gb": flavor.ephemeral_gb,
            "swap_mb": flavor.swap_mb,
        },
        "image": image_record(image),
        "state": state.value,
        "created_at": time.time(),
        "cpu_time_ns": 0,
        "running_since": None,
        "block_devices": {},
        "vifs": [],
        "files": {},
        "rescued": False,
        "admin_password_changed_at": None,
        "console": [],
    }


def image_record(image: ImageRef) -> dict[str, Any]:
    return {
        "ref": image.ref,
        "disk_format": image.disk_format,
        "kernel": image.kernel,
        "ramdisk": image.ramdisk,
        "kernel_cmdline": image.kernel_cmdline,
    }


def console(record: dict[str, Any], *lines: str) -> None:
    """Append lines to the instance's console log (bounded)."""
    since = record.get("running_since")
    uptime = max(0.0, time.time() - since) if since else 0.0
    lines_kept = record["console"]
    lines_kept.extend(f"[{uptime:12.6f}] {line}" for line in lines)
    if len(lines_kept) > CONSOLE_MAX_LINES:
        del lines_kept[:-CONSOLE_MAX_LINES]


def start(record: dict[str, Any]) -> None:
    """Boot the guest: running, a new boot time, the boot lines on its console."""
    record["state"] = PowerState.RUNNING.value
    record["running_since"] = time.time()
    console(record, f"Linux version 6.1.0-fake ({record['name']}) booting",
             f"virtkit-fake: root disk from image {record['image']['ref']}",
             f"{record['name']} login:")


def stop(record: dict[str, Any], how: str) -> None:
    """Stop the guest (`how` goes to the console): its CPU time is counted, its boot ends."""
    if record.get("running_since"):
        elapsed = max(0.0, time.time() - record["running_since"])
        record["cpu_time_ns"] += int(elapsed * 1e9 * 0.01)
    console(record, f"reboot: {how}")
    record["state"] = PowerState.SHUTDOWN.value
    record["running_since"] = None


def state_of(record: dict[str, Any]) -> PowerState:
    return PowerState(record["state"])
