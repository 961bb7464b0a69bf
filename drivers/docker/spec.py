"""Instance + flavor + image -> the arguments of a docker container create. No docker calls."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virt.errors import InvalidRequest
from virt.model import Flavor, ImageRef, Instance, Vif

LABEL_PREFIX = "virtkit."
LABEL_MANAGED = "virtkit.managed"
LABEL_HOST = "virtkit.host"
LABEL_UUID = "virtkit.uuid"
LABEL_NAME = "virtkit.name"
LABEL_FLAVOR = "virtkit.flavor"
LABEL_VCPUS = "virtkit.vcpus"
LABEL_MEMORY_MB = "virtkit.memory_mb"
LABEL_ROOT_GB = "virtkit.root_gb"
LABEL_SNAPSHOT_OF = "virtkit.snapshot_of"
#: The labels `labels` sets on an instance's container.
INSTANCE_LABELS = (
    LABEL_MANAGED, LABEL_HOST, LABEL_UUID, LABEL_NAME, LABEL_FLAVOR, LABEL_VCPUS,
    LABEL_MEMORY_MB, LABEL_ROOT_GB,
)

#: Docker's own rule for container names (daemon/names.go): at least two characters.
_CONTAINER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# One path component of an image repository, and an optional registry host[:port].
_REPO_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# A first component is a registry only if it has a '.' or a port, or is localhost.
_REGISTRY = r"(?:(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+)"
_REPOSITORY_RE = re.compile(rf"^(?:{_REGISTRY}/)?{_REPO_COMPONENT}(?:/{_REPO_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

#: Docker refuses memory limits under 6 MiB.
MIN_MEMORY_MB = 6
MIB = 1024 * 1024
NANO = 1_000_000_000

#: Image property (Glance's name) holding the container command, shell-quoted.
COMMAND_PROPERTY = "os_command_line"
#: Image property naming the user whose password set_admin_password changes.
ADMIN_USER_PROPERTY = "os_admin_user"


def host_filters(host: str) -> list[str]:
    """Label filters selecting every container virtkit made for `host`."""
    return [f"{LABEL_MANAGED}=1", f"{LABEL_HOST}={host}"]


def validate_container_name(name: str) -> str:
    """The instance name as a container name, or InvalidRequest saying why docker refuses it."""
    if not _CONTAINER_NAME_RE.match(name):
        raise InvalidRequest(
            f"instance name {name!r} cannot name a docker container: docker needs at least "
            "two characters from [a-zA-Z0-9_.-], starting with a letter or digit",
            hint="rename the instance",
        )
    return name


def parse_image_name(name: str) -> tuple[str, str]:
    """'repo[:tag]' -> (repo, tag) for a snapshot, or InvalidRequest."""
    repo, tag = name, "latest"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = name.rpartition(":")
    if not _REPOSITORY_RE.match(repo) or not _TAG_RE.match(tag):
        raise InvalidRequest(
            f"snapshot name {name!r} is not a docker image name",
            hint="use lower-case 'repository[:tag]', e.g. 'snapshots/web1:2024-06-01'",
        )
    return repo, tag


def image_name(image: ImageRef) -> str:
    """The docker image an ImageRef names, refusing formats docker cannot boot."""
    if image.disk_format not in (None, "docker"):
        raise InvalidRequest(
            f"image {image.ref!r} has disk_format {image.disk_format!r}; the docker driver boots "
            "docker images only",
            hint="pass a docker image name or id (disk_format 'docker' or unset)",
        )
    ref = image.ref.strip()
    if any(ch.isspace() for ch in ref):
        raise InvalidRequest(f"image reference {ref!r} contains whitespace")
    return ref


def image_command(image: ImageRef) -> list[str] | None:
    """The command from the image's `os_command_line` property, or None for the image's own."""
    text = image.properties.get(COMMAND_PROPERTY)
    if not text:
        return None
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InvalidRequest(
            f"image property {COMMAND_PROPERTY} {text!r} is not a valid command line: {exc}"
        ) from None


@dataclass(frozen=True)
class Limits:
    """What docker enforces for one flavor."""

    nano_cpus: int
    mem_limit: int
    memswap_limit: int
    storage_size: str | None

    def host_config(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "nano_cpus": self.nano_cpus,
            "mem_limit": self.mem_limit,
            "memswap_limit": self.memswap_limit,
        }
        if self.storage_size:
            kwargs["storage_opt"] = {"size": self.storage_size}
        return kwargs


def flavor_limits(flavor: Flavor, *, host_cpus: int, root_disk_limit: bool) -> Limits:
    """Map a flavor onto docker limits, or InvalidRequest naming what docker cannot express."""
    problems = []
    if flavor.vcpus > host_cpus:
        problems.append(f"{flavor.vcpus} vCPUs but this host has {host_cpus}")
    if flavor.memory_mb < MIN_MEMORY_MB:
        problems.append(f"{flavor.memory_mb} MB of memory, under docker's {MIN_MEMORY_MB} MB")
    if flavor.ephemeral_gb:
        problems.append(f"a {flavor.ephemeral_gb} GB ephemeral disk, which containers do not have")
    if problems:
        raise InvalidRequest(
            f"flavor {flavor.name!r} cannot be expressed as docker limits: "
            + "; ".join(problems),
            hint="use a flavor within the host's CPUs, with at least 6 MB and ephemeral_gb 0",
        )
    memory = flavor.memory_mb * MIB
    return Limits(
        nano_cpus=flavor.vcpus * NANO,
        mem_limit=memory,
        memswap_limit=memory + flavor.swap_mb * MIB,
        storage_size=f"{flavor.root_gb}G" if root_disk_limit and flavor.root_gb else None,
    )


def labels(instance: Instance, host: str) -> dict[str, str]:
    """The labels that mark a container as this instance, made by virtkit for `host`."""
    flavor = instance.flavor
    return {
        LABEL_MANAGED: "1",
        LABEL_HOST: host,
        LABEL_UUID: instance.uuid,
        LABEL_NAME: instance.name,
        LABEL_FLAVOR: flavor.name,
        LABEL_VCPUS: str(flavor.vcpus),
        LABEL_MEMORY_MB: str(flavor.memory_mb),
        LABEL_ROOT_GB: str(flavor.root_gb),
    }


def snapshot_labels(instance_uuid: str) -> dict[str, str]:
    """The labels a snapshot commit sets: each label of `labels` blanked.

    `docker commit` keeps the container's labels in the image unless the commit overrides
    them (it cannot drop one), and a container run from the image inherits them: without
    this, a `docker run` of a snapshot would pass for the source instance.
    """
    blanked = dict.fromkeys(INSTANCE_LABELS, "")
    blanked[LABEL_MANAGED] = "0"
    blanked[LABEL_SNAPSHOT_OF] = instance_uuid
    return blanked


def mac_address(vifs: Sequence[Vif]) -> str | None:
    """The container's MAC from its one vif; docker gives a container one interface here."""
    if len(vifs) > 1:
        raise InvalidRequest(
            f"{len(vifs)} vifs requested; the docker driver plugs one interface per container",
            hint="pass at most one vif",
        )
    return vifs[0].address if vifs else None


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `create_container` needs for one instance."""

    name: str
    image: str
    labels: Mapping[str, str]
    limits: Limits
    command: list[str] | None = None
    mac_address: str | None = None
    network: str = "bridge"
    tty: bool = True
    init: bool = True
    binds: tuple[str, ...] = ()  # 'HOST:CONTAINER:rw' (GlusterFS volumes, drivers/docker/volumes.py)

    def create_kwargs(self, api: Any) -> dict[str, Any]:
        """Keyword arguments of `APIClient.create_container`, built with `api`."""
        host_config = api.create_host_config(
            network_mode=self.network, init=self.init, **self.limits.host_config(),
            **({"binds": list(self.binds)} if self.binds else {}),
        )
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "labels": dict(self.labels),
            "host_config": host_config,
            "command": self.command,
            "tty": self.tty,
            "stdin_open": self.tty,
            "detach": True,
        }
        if self.mac_address:
            kwargs["mac_address"] = self.mac_address
        return kwargs


def root_disk_limit(info: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the daemon's storage driver can cap a container's root disk, and why (not)."""
    driver = str(info.get("Driver", "?"))
    status = {str(k): str(v) for k, v in info.get("DriverStatus") or []}
    backing = status.get("Backing Filesystem", "?")
    if driver in ("btrfs", "zfs", "devicemapper", "windowsfilter"):
        return True, f"storage driver {driver} supports a size limit"
    if driver in ("overlay2", "overlay") and backing == "xfs":
        return True, f"storage driver {driver} on xfs (needs the pquota mount option)"
    return False, (
        f"storage driver {driver} on backing filesystem {backing} has no per-container size "
        "limit (overlay2 needs xfs mounted with pquota)"
    )
