"""The fake engine's instance records: what a JSON state file holds, and the power moves
that change it (start, stop, freeze, thaw, the console log they write).

A record holds what an observer of a real engine would look at: a boot id that changes on
each boot, a guest clock that stands still while the guest is paused or suspended, the image
it booted, its disks and the admin password's scrypt hash (never the password). The files
on its root disk are in the disk's own file (`drivers.fake.state`).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid as uuidlib
from typing import Any

from virt.model import ImageRef, Instance, PowerState

CONSOLE_MAX_LINES = 400

# States in which the guest has a live domain (running, or paused with its memory).
ALIVE = frozenset({PowerState.RUNNING.value, PowerState.PAUSED.value})


def new_instance(instance: Instance, image: ImageRef, state: PowerState) -> dict[str, Any]:
    """The state file of a new instance (its root disk is a file of its own)."""
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
        "boot_id": None,
        "clock": {"elapsed": 0.0, "since": None},
        "booted_image": None,
        "disks": ["root"],
        "block_devices": {},
        "vifs": [],
        "rescued": False,
        "admin_password": None,
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
    """Boot the guest: running, a new boot (id, clock), from the rescue image while rescued,
    the boot lines on its console."""
    now = time.time()
    booted = record.get("rescue_image") if record["rescued"] else record["image"]["ref"]
    record.update(state=PowerState.RUNNING.value, running_since=now,
                  boot_id=uuidlib.uuid4().hex, clock={"elapsed": 0.0, "since": now},
                  booted_image=booted)
    console(record, f"Linux version 6.1.0-fake ({record['name']}) booting",
            f"virtkit-fake: root disk from image {booted}",
            f"{record['name']} login:")


def freeze(record: dict[str, Any], state: PowerState) -> None:
    """Pause or suspend the guest: its clock stands still, its boot goes on."""
    clock = record.setdefault("clock", {"elapsed": 0.0, "since": None})  # older records: none
    if clock["since"] is not None:
        clock["elapsed"] += max(0.0, time.time() - clock["since"])
        clock["since"] = None
    record["state"] = state.value


def thaw(record: dict[str, Any]) -> None:
    """Unpause or resume the guest: running again in the same boot, its clock going on."""
    record.setdefault("clock", {"elapsed": 0.0, "since": None})["since"] = time.time()
    record["state"] = PowerState.RUNNING.value


def set_password(record: dict[str, Any], password: str) -> None:
    """Make `password` the guest's admin password (its salted scrypt hash is kept)."""
    salt = os.urandom(16)
    record["admin_password"] = {"salt": salt.hex(), "scrypt": _scrypt(password, salt).hex()}
    record["admin_password_changed_at"] = time.time()


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)


def stop(record: dict[str, Any], how: str) -> None:
    """Stop the guest (`how` goes to the console): its CPU time is counted, its boot ends."""
    if record.get("running_since"):
        elapsed = max(0.0, time.time() - record["running_since"])
        record["cpu_time_ns"] += int(elapsed * 1e9 * 0.01)
    console(record, f"reboot: {how}")
    record.update(state=PowerState.SHUTDOWN.value, running_since=None, boot_id=None,
                  clock={"elapsed": 0.0, "since": None}, booted_image=None)


def state_of(record: dict[str, Any]) -> PowerState:
    return PowerState(record["state"])
