"""What the engine is asked to create for an instance (its "design"). No engine calls."""

from __future__ import annotations

from typing import Any

from virt.model import Instance

#: The label that says which virtkit host a guest belongs to.
LABEL_HOST = "virtkit.host"


def guest_spec(instance: Instance, *, host: str, disk: str) -> dict[str, Any]:
    """The engine's definition of `instance` on `host`, booting from the root disk `disk`.

    Instance metadata `acpi = off` makes a guest that ignores ACPI shutdown requests (a
    power-off then has to force it).
    """
    flavor = instance.flavor
    return {
        "uuid": instance.uuid,
        "name": instance.name,
        "labels": {LABEL_HOST: host},
        "memory_mb": flavor.memory_mb,
        "vcpus": flavor.vcpus,
        "disk": disk,
        "acpi": instance.metadata.get("acpi", "on") != "off",
    }


def on_host(guest: dict[str, Any], host: str) -> bool:
    """Whether the engine's `guest` belongs to the virtkit host `host`."""
    return bool(guest.get("labels", {}).get(LABEL_HOST) == host)
