"""The data that crosses the driver boundary: frozen, validated on construction."""

from __future__ import annotations

import enum
import json
import re
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from virt.errors import InvalidRequest
from virt.masking import mask_secrets

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DEVICE_RE = re.compile(r"^(/dev/)?[a-z]{2,4}[a-z]{1,2}$")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The checks below build their messages only on failure: models are made on hot paths
# (an InstanceInfo per get_info).

def _require_text(value: Any, what: str) -> None:
    """A non-empty string."""
    if not (isinstance(value, str) and value.strip()):
        raise InvalidRequest(f"{what} must be a non-empty string, got {_json_type(value)}")


def _require_optional_str(value: Any, what: str) -> None:
    """A string or None (stored records may hold empty strings: they stay valid)."""
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string or null, got {_json_type(value)}")


def _require_count(value: Any, what: str, *, optional: bool = False) -> None:
    """A non-negative integer (or None when `optional`)."""
    if optional and value is None:
        return
    if not (_is_int(value) and value >= 0):
        raise InvalidRequest(f"{what} must be a non-negative integer, got {value!r}")


def _require_mapping(value: Any, what: str) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise InvalidRequest(
            f"{what} must be a mapping (a JSON object), got {_json_type(value)}")


def validate_uuid(value: str, what: str = "uuid") -> str:
    """Return the canonical lower-case form of a UUID string or raise InvalidRequest."""
    try:
        return str(uuidlib.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(f"{what} {value!r} is not a valid UUID") from None


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def _json_type(value: Any) -> str:
    """What a JSON value is, for an error message (never the value: it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


class PowerState(enum.Enum):
    """What the engine says about a guest. UNKNOWN: the engine itself cannot tell (an engine
    that cannot be reached raises HypervisorUnavailable instead)."""

    NOSTATE = "nostate"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


class VmState(enum.StrEnum):
    """Nova's vm_states: what the instance is, as the service sees it."""

    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    RESCUED = "rescued"
    ERROR = "error"
    DELETED = "deleted"


class TaskState(enum.StrEnum):
    """Nova's task_states: the operation in progress (None when idle)."""

    SPAWNING = "spawning"
    DELETING = "deleting"
    POWERING_OFF = "powering-off"
    POWERING_ON = "powering-on"
    REBOOTING = "rebooting"
    REBOOTING_HARD = "rebooting_hard"
    PAUSING = "pausing"
    UNPAUSING = "unpausing"
    SUSPENDING = "suspending"
    RESUMING = "resuming"
    IMAGE_SNAPSHOT = "image_snapshot"
    UPDATING_PASSWORD = "updating_password"
    ATTACHING_VOLUME = "attaching_volume"
    DETACHING_VOLUME = "detaching_volume"
    REBUILDING = "rebuilding"
    #: virtkit-recover holds a claim on it (evacuating it, or restarting it after a reboot).
    RECOVERING = "recovering"


class HostStatus(enum.StrEnum):
    """What the compute service knows of a host: alive, gone, fenced off, or taken out."""

    UP = "up"
    DOWN = "down"
    FENCED = "fenced"
    DISABLED = "disabled"


#: Upper bounds of a flavor: above any real host, low enough that a typo (an extra digit
#: or ten) is refused instead of reaching an engine. memory_mb and swap_mb 16 TiB in MiB,
#: vcpus 4096, root_gb and ephemeral_gb 1 PiB in GiB.
FLAVOR_LIMITS = {
    "vcpus": 4096,
    "memory_mb": 16 * 1024 * 1024,
    "root_gb": 1024 * 1024,
    "ephemeral_gb": 1024 * 1024,
    "swap_mb": 16 * 1024 * 1024,
}
_LIMITS_HINT = "a flavor has at most 4096 vCPUs, 16 TiB of memory or swap, 1 PiB of disk"


@dataclass(frozen=True)
class Flavor:
    """The size of an instance (bounded by FLAVOR_LIMITS)."""

    name: str
    vcpus: int
    memory_mb: int
    root_gb: int = 0
    ephemeral_gb: int = 0
    swap_mb: int = 0
    extra_specs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(self.name.strip()),
                 f"flavor name must not be empty, got {_json_type(self.name)}")
        for attr in ("vcpus", "memory_mb", "root_gb", "ephemeral_gb", "swap_mb"):
            value = getattr(self, attr)
            _require(_is_int(value), f"flavor {attr} must be an integer, got {value!r}")
        _require(self.vcpus >= 1, f"flavor vcpus must be at least 1, got {self.vcpus}")
        _require(self.memory_mb >= 1, f"flavor memory_mb must be positive, got {self.memory_mb}")
        for attr in ("root_gb", "ephemeral_gb", "swap_mb"):
            _require(getattr(self, attr) >= 0, f"flavor {attr} must not be negative")
        for attr, limit in FLAVOR_LIMITS.items():
            value = getattr(self, attr)
            if value > limit:
                raise InvalidRequest(f"flavor {attr} must be at most {limit}, got {value}",
                                     hint=_LIMITS_HINT)
        _require_mapping(self.extra_specs, "flavor extra_specs")
        object.__setattr__(self, "extra_specs", _frozen_mapping(self.extra_specs))


@dataclass(frozen=True)
class ImageRef:
    """What to boot: a file path (libvirt), an image name or id (docker), an image uuid (others).

    `kernel` and `ramdisk` select direct kernel boot (AMI/AKI/ARI style).
    """

    ref: str
    disk_format: str | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    kernel_cmdline: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(isinstance(self.ref, str) and bool(self.ref.strip()),
                 f"image reference must not be empty, got {_json_type(self.ref)}")
        _require(
            self.disk_format in (None, "qcow2", "raw", "docker", "zvol", "vhd", "ami", "iso"),
            f"unknown disk_format {self.disk_format!r}",
        )
        for attr in ("kernel", "ramdisk", "kernel_cmdline"):
            _require_optional_str(getattr(self, attr), f"image {attr}")
        _require_mapping(self.properties, "image properties")
        object.__setattr__(self, "properties", _frozen_mapping(self.properties))


@dataclass(frozen=True)
class VolumeConnection:
    """Nova's `connection_info`: how to reach a volume. Secrets are masked in repr."""

    driver_volume_type: str
    data: Mapping[str, Any]
    serial: str | None = None
    #: Nova's `multiattach` flag: the volume may be attached to several instances at once.
    multiattach: bool = False

    def __post_init__(self) -> None:
        _require(
            isinstance(self.driver_volume_type, str) and bool(self.driver_volume_type.strip()),
            "connection_info 'driver_volume_type' must be a non-empty string such as "
            f"\"iscsi\", got {_json_type(self.driver_volume_type)}",
        )
        _require(isinstance(self.data, Mapping),
                 f"connection_info 'data' must be an object, got {_json_type(self.data)}")
        _require(self.serial is None or isinstance(self.serial, str),
                 f"connection_info 'serial' must be a string, got {_json_type(self.serial)}")
        object.__setattr__(self, "data", _frozen_mapping(self.data))
        mask_secrets(self.data)  # remembers its secrets: scrubbed from free text from now on

    @classmethod
    def from_connection_info(cls, info: Mapping[str, Any] | str) -> VolumeConnection:
        """Parse Nova's connection_info (a dict or its JSON text)."""
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"connection_info is not valid JSON: {exc.msg}") from None
        if not isinstance(info, Mapping):
            raise InvalidRequest("connection_info must be a JSON object")
        if "driver_volume_type" not in info:
            raise InvalidRequest("connection_info is missing 'driver_volume_type'")
        data = {} if info.get("data") is None else info["data"]
        _require(isinstance(data, Mapping),
                 f"connection_info 'data' must be an object, got {_json_type(data)}")
        serial = info.get("serial") or data.get("volume_id")
        multiattach = info.get("multiattach", data.get("multiattach", False)) is True
        return cls(info["driver_volume_type"], data, serial, multiattach)

    def to_connection_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"driver_volume_type": self.driver_volume_type, "data": dict(self.data)}
        if self.serial:
            info["serial"] = self.serial
        if self.multiattach:
            info["multiattach"] = True
        return info

    def masked(self) -> dict[str, Any]:
        """connection_info with every secret replaced, safe for logs and errors."""
        return mask_secrets(self.to_connection_info())

    def __repr__(self) -> str:
        return f"VolumeConnection({self.masked()!r})"


@dataclass(frozen=True)
class BlockDevice:
    """A volume attached (or to attach) to an instance at a mount point (`vdb` is taken as
    `/dev/vdb`: the one place a mount point is normalised)."""

    connection: VolumeConnection
    mountpoint: str
    volume_id: str | None = None
    disk_bus: str | None = None
    delete_on_termination: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.connection, VolumeConnection),
                 f"block device connection must be a VolumeConnection, got "
                 f"{type(self.connection).__name__}")
        _require(
            isinstance(self.mountpoint, str) and bool(_DEVICE_RE.match(self.mountpoint)),
            f"mountpoint {self.mountpoint!r} is not a device name like /dev/vdb",
        )
        if not self.mountpoint.startswith("/dev/"):  # "vdb" means /dev/vdb, here only
            object.__setattr__(self, "mountpoint", f"/dev/{self.mountpoint}")
        _require_optional_str(self.volume_id, "block device volume_id")
        _require_optional_str(self.disk_bus, "block device disk_bus")
        if self.volume_id is None and self.connection.serial:
            object.__setattr__(self, "volume_id", self.connection.serial)

    @property
    def device_name(self) -> str:
        """The mount point without /dev/ (vdb)."""
        return self.mountpoint.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Vif:
    """A virtual network interface."""

    id: str
    address: str
    network: str | None = None
    bridge: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        _require_text(self.id, "vif id")
        for attr in ("network", "bridge", "model"):
            _require_optional_str(getattr(self, attr), f"vif {attr}")
        _require(
            isinstance(self.address, str) and bool(_MAC_RE.match(self.address.lower())),
            f"vif address {self.address!r} is not a MAC address like 52:54:00:12:34:56",
        )
        object.__setattr__(self, "address", self.address.lower())


@dataclass(frozen=True)
class Instance:
    """A guest, as the compute service knows it."""

    uuid: str
    name: str
    flavor: Flavor
    image: ImageRef | None = None
    host: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", validate_uuid(self.uuid, "instance uuid"))
        _require(
            isinstance(self.name, str) and bool(_NAME_RE.match(self.name)),
            f"instance name {self.name!r} is invalid: use 1-63 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
        )
        _require(isinstance(self.flavor, Flavor),
                 f"instance flavor must be a Flavor, got {type(self.flavor).__name__}")
        _require(self.image is None or isinstance(self.image, ImageRef),
                 f"instance image must be an ImageRef or None, got {type(self.image).__name__}")
        _require_optional_str(self.host, "instance host")
        _require_mapping(self.metadata, "instance metadata")
        object.__setattr__(self, "metadata", _frozen_mapping(self.metadata))


@dataclass(frozen=True)
class InstanceInfo:
    """What the engine reports about one guest."""

    state: PowerState
    internal_id: str | None = None
    max_mem_kb: int | None = None
    mem_kb: int | None = None
    num_cpu: int | None = None
    cpu_time_ns: int | None = None

    def __post_init__(self) -> None:
        # One expression for the usual case: get_info makes one of these per call.
        m, k, n, c = self.max_mem_kb, self.mem_kb, self.num_cpu, self.cpu_time_ns
        if (type(self.state) is PowerState
                and (self.internal_id is None or type(self.internal_id) is str)
                and (m is None or type(m) is int and m >= 0)
                and (k is None or type(k) is int and k >= 0)
                and (n is None or type(n) is int and n >= 0)
                and (c is None or type(c) is int and c >= 0)):
            return
        if not isinstance(self.state, PowerState):
            raise InvalidRequest(f"instance info state must be a PowerState, got {self.state!r}")
        _require_optional_str(self.internal_id, "instance info internal_id")
        for attr in ("max_mem_kb", "mem_kb", "num_cpu", "cpu_time_ns"):
            _require_count(getattr(self, attr), "instance info " + attr, optional=True)


@dataclass(frozen=True)
class PowerOffResult:
    """How a power-off went: `clean` if the guest shut down itself, `forced` if we pulled the plug."""

    clean: bool
    forced: bool
    duration_s: float
    already_off: bool = False


@dataclass(frozen=True)
class HostResources:
    """Capacity and usage of the host, Nova's `get_available_resource` keys."""

    vcpus: int
    memory_mb: int
    local_gb: int
    vcpus_used: int
    memory_mb_used: int
    local_gb_used: int
    hypervisor_type: str
    hypervisor_version: int
    hypervisor_hostname: str
    cpu_info: str = "{}"
    disk_available_least: int | None = None
    supported_instances: tuple[tuple[str, str, str], ...] = ()

    REQUIRED_KEYS = (
        "vcpus",
        "memory_mb",
        "local_gb",
        "vcpus_used",
        "memory_mb_used",
        "local_gb_used",
        "hypervisor_type",
        "hypervisor_version",
        "hypervisor_hostname",
        "cpu_info",
        "disk_available_least",
        "supported_instances",
    )

    def __post_init__(self) -> None:
        for attr in ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
                     "local_gb_used", "hypervisor_version"):
            _require_count(getattr(self, attr), f"host resources {attr}")
        # disk_available_least may be negative: Nova's overcommitted disk reads so
        _require(self.disk_available_least is None or _is_int(self.disk_available_least),
                 f"host resources disk_available_least must be an integer or None, got "
                 f"{self.disk_available_least!r}")
        _require_text(self.hypervisor_type, "host resources hypervisor_type")
        _require_text(self.hypervisor_hostname, "host resources hypervisor_hostname")
        _require(isinstance(self.cpu_info, str),
                 f"host resources cpu_info must be JSON text, got {_json_type(self.cpu_info)}")
        entries = self.supported_instances
        _require(isinstance(entries, list | tuple) and all(
            isinstance(e, list | tuple) and len(e) == 3 and all(isinstance(x, str) for x in e)
            for e in entries),
            "host resources supported_instances must be (arch, hypervisor_type, vm_mode) "
            f"string triples, got {entries!r}")
        object.__setattr__(self, "supported_instances", tuple(tuple(e) for e in entries))

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.REQUIRED_KEYS}


@dataclass(frozen=True)
class VolumeConnector:
    """This host as a storage initiator (what Cinder's initialize_connection needs)."""

    host: str
    ip: str
    initiator: str | None = None
    multipath: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {"host": self.host, "ip": self.ip, "initiator": self.initiator,
                "multipath": self.multipath}
        data.update(self.extra)
        return data
