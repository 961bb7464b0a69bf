"""The compute driver interface and its capabilities.

A driver subclasses ComputeDriver, declares `capabilities`, and implements the mandatory
methods plus the optional ones its capabilities name. Optional methods it does not declare
raise UnsupportedOperation from this base class. Every argument is keyword-only.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Iterable, Sequence
from typing import ClassVar

from oslo_config import cfg

from virt.config import register_group_opts
from virt.errors import InvalidRequest, UnsupportedOperation
from virt.events import EventEmitter, LifecycleEvent, Listener
from virt.model import (
    BlockDevice,
    HostResources,
    ImageRef,
    Instance,
    InstanceInfo,
    PowerOffResult,
    Vif,
    VolumeConnector,
)

LOG = logging.getLogger(__name__)


class Capability(enum.StrEnum):
    """Optional features a driver may declare."""

    PAUSE = "pause"
    SUSPEND = "suspend"
    SNAPSHOT = "snapshot"
    RESCUE = "rescue"
    VOLUME_ATTACH = "volume_attach"
    VOLUME_ISCSI_CHAP = "volume_iscsi_chap"
    CONSOLE_OUTPUT = "console_output"
    SET_ADMIN_PASSWORD = "set_admin_password"
    INJECT_FILE = "inject_file"
    LIFECYCLE_EVENTS = "lifecycle_events"
    INSTANCE_DISK_FILE = "instance_disk_file"


# Every public operation of the interface, and the capability that gates it (None: mandatory).
OPERATIONS: dict[str, Capability | None] = {
    "init_host": None,
    "cleanup_host": None,
    "get_available_resource": None,
    "list_instances": None,
    "list_instance_uuids": None,
    "get_info": None,
    "instance_exists": None,
    "spawn": None,
    "destroy": None,
    "reboot": None,
    "power_off": None,
    "power_on": None,
    "pause": Capability.PAUSE,
    "unpause": Capability.PAUSE,
    "suspend": Capability.SUSPEND,
    "resume": Capability.SUSPEND,
    "snapshot": Capability.SNAPSHOT,
    "rescue": Capability.RESCUE,
    "unrescue": Capability.RESCUE,
    "get_volume_connector": Capability.VOLUME_ATTACH,
    "attach_volume": Capability.VOLUME_ATTACH,
    "detach_volume": Capability.VOLUME_ATTACH,
    "get_console_output": Capability.CONSOLE_OUTPUT,
    "set_admin_password": Capability.SET_ADMIN_PASSWORD,
    "inject_file": Capability.INJECT_FILE,
    "instance_disk_path": Capability.INSTANCE_DISK_FILE,
    "register_event_listener": None,
    "unregister_event_listener": None,
}


def spawn_image(instance: Instance) -> ImageRef:
    """The image `spawn` boots `instance` from: `instance.image`, or InvalidRequest naming
    the instance if it has none. A driver's spawn calls it before it creates anything."""
    if instance.image is None:
        raise InvalidRequest(f"instance {instance.uuid} has no image to spawn from",
                             hint="give the instance an image (Instance.image)")
    return instance.image


class ComputeDriver(abc.ABC):
    """Base class of every compute driver.

    Contracts (checked by the conformance suite): `destroy` of an unknown instance is a
    no-op; `get_info` of an unknown instance raises InstanceNotFound; `power_on` of a
    running instance and `unpause` of a running one are no-ops; a failed `spawn` leaves
    nothing behind; an unreachable engine raises HypervisorUnavailable from every call,
    `get_info` included (PowerState.UNKNOWN is for a guest the engine cannot tell about).

    Recovery relies on three more: `spawn` reuses a valid root disk that already exists at
    `instance_disk_path` (shared storage after a host failed) instead of replacing it;
    `destroy(destroy_disks=False)` removes the guest and keeps its disks; and a driver that
    keeps the root disk as a file declares `Capability.INSTANCE_DISK_FILE` and says where it
    is through `instance_disk_path` (without it recovery cannot check the disk is there).

    The kit in this package gives the shared mechanics: `spawn_image` (the image spawn boots
    from, refused when missing), `power` (timeout checks, graceful power-off, state guards),
    `rollback.SpawnRollback` (the one owner of a failed spawn's clean-up), `transitions`
    (events, debounce, resync), `errors.EngineErrors`.
    """

    #: Entry-point name of the driver.
    name: ClassVar[str] = "base"
    #: Optional features implemented by this driver: the most it can do on any engine. What
    #: one instance can do on its connection is `connection_capabilities`.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # Set by narrow_capabilities (init_host); None: the class's capabilities.
    _narrowed: frozenset[Capability] | None = None
    #: The driver's option group in the config file, and its options.
    config_group: ClassVar[str | None] = None
    config_opts: ClassVar[Sequence[cfg.Opt]] = ()

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf
        self.register_opts(conf)
        self._events = EventEmitter()

    @classmethod
    def register_opts(cls, conf: cfg.ConfigOpts) -> None:
        if cls.config_group and cls.config_opts:
            # Also refuses unknown options and bad values in the driver's group.
            register_group_opts(conf, cls.config_group, cls.config_opts)

    @property
    def connection_capabilities(self) -> frozenset[Capability]:
        """What this driver instance can do on its connection: the class's `capabilities`,
        less what `init_host` found the engine behind it cannot do."""
        narrowed = self._narrowed
        return type(self).capabilities if narrowed is None else narrowed

    def narrow_capabilities(self, lacking: Iterable[Capability], *, reason: str) -> None:
        """For `init_host`: this connection cannot do `lacking` (`reason` says why).

        Each call starts again from the class's capabilities, so a repeated init_host
        narrows to what its own connection lacks, no more.
        """
        lacking = frozenset(lacking) & type(self).capabilities
        self._narrowed = type(self).capabilities - lacking
        if lacking:
            LOG.info("%s: this connection does not support %s: %s", self.name,
                     ", ".join(sorted(c.value for c in lacking)), reason)

    def supports(self, capability: Capability) -> bool:
        """Whether this driver instance can do `capability` on its connection."""
        return capability in self.connection_capabilities

    def _unsupported(self, operation: str) -> UnsupportedOperation:
        return UnsupportedOperation(self.name, operation)

    # -- host ------------------------------------------------------------------------------

    @abc.abstractmethod
    def init_host(self, *, host: str) -> None:
        """Connect to the engine and get ready to serve `host`."""

    def cleanup_host(self, *, host: str) -> None:  # noqa: B027 - optional hook
        """Release connections and threads; the driver may not be used afterwards."""

    @abc.abstractmethod
    def get_available_resource(self) -> HostResources:
        """Capacity and usage of this host."""

    def get_volume_connector(self, *, instance: Instance | None = None) -> VolumeConnector:
        """This host as a storage initiator."""
        raise self._unsupported("get_volume_connector")

    def instance_disk_path(self, *, instance: Instance) -> str:
        """Where this host keeps (or would make) the instance's root disk as a file
        (`Capability.INSTANCE_DISK_FILE`): recovery checks the file is there (shared storage)
        before spawning, and `spawn` reuses it."""
        raise self._unsupported("instance_disk_path")

    # -- state -----------------------------------------------------------------------------

    @abc.abstractmethod
    def list_instances(self) -> list[str]:
        """Names of the instances this driver manages on the engine."""

    @abc.abstractmethod
    def list_instance_uuids(self) -> list[str]:
        """UUIDs of the instances this driver manages on the engine."""

    @abc.abstractmethod
    def get_info(self, *, instance: Instance) -> InstanceInfo:
        """The guest's state; InstanceNotFound if the engine has no such guest."""

    def instance_exists(self, *, instance: Instance) -> bool:
        return instance.uuid in self.list_instance_uuids()

    # -- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    def spawn(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        power_on: bool = True,
    ) -> None:
        """Create the guest from `instance.image` (and start it unless `power_on` is False).

        An instance without an image is refused with InvalidRequest before anything is made
        (`spawn_image` is the check).

        A valid root disk already at `instance_disk_path` is reused, not replaced (recovery
        re-spawns on shared storage). On failure everything this call created is removed
        (through `virt.driver.rollback.SpawnRollback`; nothing that was there before, such as
        a reused disk) and the error is raised: callers never clean up after a spawn.
        """

    @abc.abstractmethod
    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        """Stop and remove the guest; for an unknown instance, no error.

        With `destroy_disks=False` the guest's disks are kept where they are (recovery and
        evacuation rely on it); with True they are removed even when the guest is already
        gone (disks an earlier `destroy_disks=False` kept). Volumes in `block_devices` are
        disconnected, never deleted.
        """

    @abc.abstractmethod
    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        """Soft reboot (guest-cooperative, hard after `timeout`) or hard reset."""

    @abc.abstractmethod
    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        """Ask the guest to shut down every `retry_interval` seconds; force it off after
        `timeout` (0: at once). Negative or non-finite values are InvalidRequest
        (`virt.driver.power.graceful_power_off` does all of this)."""

    @abc.abstractmethod
    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        """Start a stopped guest; a no-op if it is already running."""

    def pause(self, *, instance: Instance) -> None:
        raise self._unsupported("pause")

    def unpause(self, *, instance: Instance) -> None:
        """Resume a paused guest; a no-op if it is running."""
        raise self._unsupported("unpause")

    def suspend(self, *, instance: Instance) -> None:
        raise self._unsupported("suspend")

    def resume(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        raise self._unsupported("resume")

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        """Capture the root disk as a new image a later spawn can boot."""
        raise self._unsupported("snapshot")

    def rescue(
        self, *, instance: Instance, image: ImageRef, rescue_password: str | None = None
    ) -> None:
        raise self._unsupported("rescue")

    def unrescue(self, *, instance: Instance) -> None:
        raise self._unsupported("unrescue")

    # -- volumes ---------------------------------------------------------------------------

    def attach_volume(self, *, instance: Instance, block_device: BlockDevice) -> None:
        raise self._unsupported("attach_volume")

    def detach_volume(self, *, instance: Instance, block_device: BlockDevice) -> None:
        raise self._unsupported("detach_volume")

    # -- guest -----------------------------------------------------------------------------

    def get_console_output(self, *, instance: Instance, max_bytes: int = 64 * 1024) -> str:
        """The tail of the guest's console log, at most `max_bytes`."""
        raise self._unsupported("get_console_output")

    def set_admin_password(self, *, instance: Instance, password: str) -> None:
        raise self._unsupported("set_admin_password")

    def inject_file(self, *, instance: Instance, path: str, contents: bytes) -> None:
        raise self._unsupported("inject_file")

    # -- events ----------------------------------------------------------------------------

    def register_event_listener(self, listener: Listener) -> None:
        self._events.register(listener)

    def unregister_event_listener(self, listener: Listener) -> None:
        self._events.unregister(listener)

    def emit_event(self, event: LifecycleEvent) -> None:
        """For drivers: deliver an event to every listener."""
        self._events.emit(event)
