"""The compute driver interface, the loader, and the kit every driver uses.

- `base`: ComputeDriver, Capability, OPERATIONS, `spawn_image` (the image a spawn boots from).
- `loader`: the stevedore entry points (`load_driver`, `list_drivers`, `installed_drivers`).
- the kit: `power` (timeout checks, graceful power-off, state guards), `rollback` (the spawn
  rollback stack), `transitions` (power-state diff -> lifecycle events, reboot debounce,
  resync), `errors` (engine errors -> virtkit errors), `options` (options shared by name).
"""

from virt.driver.base import OPERATIONS, Capability, ComputeDriver, spawn_image
from virt.driver.loader import (
    NAMESPACE,
    DriverInfo,
    describe_import_error,
    installed_drivers,
    list_drivers,
    load_driver,
    load_driver_class,
    resolve_configured_name,
    resolve_driver_name,
)

__all__ = [
    "NAMESPACE",
    "OPERATIONS",
    "Capability",
    "ComputeDriver",
    "DriverInfo",
    "describe_import_error",
    "installed_drivers",
    "list_drivers",
    "load_driver",
    "load_driver_class",
    "resolve_configured_name",
    "resolve_driver_name",
    "spawn_image",
]
