"""Typed records the state store returns, and their conversions to and from the models."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from virt.masking import mask_secrets
from virt.model import (
    BlockDevice,
    Flavor,
    ImageRef,
    Instance,
    PowerState,
    Vif,
    VolumeConnection,
)


def utcnow() -> dt.datetime:
    """Naive UTC, as the store keeps timestamps (like Nova)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=dt.UTC).isoformat()


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as a dict of its fields, mappings copied to plain dicts."""
    data = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        data[f.name] = dict(value) if isinstance(value, Mapping) else value
    return data


def flavor_to_json(flavor: Flavor) -> dict[str, Any]:
    return _plain(flavor)


def flavor_from_json(data: Mapping[str, Any]) -> Flavor:
    return Flavor(**dict(data))


def image_to_json(image: ImageRef | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return _plain(image)


def image_from_json(data: Mapping[str, Any] | None) -> ImageRef | None:
    return None if not data else ImageRef(**dict(data))


@dataclass(frozen=True)
class InstanceRecord:
    """One row of `instances`."""

    uuid: str
    name: str
    host: str | None
    node: str | None
    vm_state: str
    task_state: str | None
    power_state: PowerState
    flavor: Flavor
    image: ImageRef | None
    metadata: Mapping[str, str]
    fault: str | None
    launched_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> InstanceRecord:
        return cls(
            uuid=row["uuid"],
            name=row["name"],
            host=row["host"],
            node=row["node"],
            vm_state=row["vm_state"],
            task_state=row["task_state"],
            power_state=PowerState(row["power_state"]),
            flavor=flavor_from_json(row["flavor"]),
            image=image_from_json(row["image"]),
            metadata=dict(row["metadata"] or {}),
            fault=row["fault"],
            launched_at=row["launched_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            deleted_at=row["deleted_at"],
        )

    def to_instance(self) -> Instance:
        """The model the driver takes."""
        return Instance(
            uuid=self.uuid,
            name=self.name,
            flavor=self.flavor,
            image=self.image,
            host=self.host,
            metadata=self.metadata,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for `--format json`."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "host": self.host,
            "node": self.node,
            "vm_state": self.vm_state,
            "task_state": self.task_state,
            "power_state": self.power_state.value,
            "flavor": flavor_to_json(self.flavor),
            "image": image_to_json(self.image),
            "metadata": dict(self.metadata),
            "fault": self.fault,
            "launched_at": _iso(self.launched_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "deleted_at": _iso(self.deleted_at),
        }


@dataclass(frozen=True)
class BlockDeviceRecord:
    """One row of `block_devices`. `connection_info` holds secrets: repr and as_dict mask them."""

    id: int
    instance_uuid: str
    volume_id: str | None
    mountpoint: str
    connection_info: Mapping[str, Any] = field(repr=False)
    delete_on_termination: bool
    disk_bus: str | None
    attached_at: dt.datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], *,
                 connection_info: Mapping[str, Any] | None = None) -> BlockDeviceRecord:
        """The record of a row; `connection_info` as the store opened it (default: the
        column's JSON as it is)."""
        return cls(
            id=row["id"],
            instance_uuid=row["instance_uuid"],
            volume_id=row["volume_id"],
            mountpoint=row["mountpoint"],
            connection_info=(json.loads(row["connection_info"]) if connection_info is None
                             else connection_info),
            delete_on_termination=bool(row["delete_on_termination"]),
            disk_bus=row["disk_bus"],
            attached_at=row["attached_at"],
        )

    def to_block_device(self) -> BlockDevice:
        return BlockDevice(
            connection=VolumeConnection.from_connection_info(dict(self.connection_info)),
            mountpoint=self.mountpoint,
            volume_id=self.volume_id,
            disk_bus=self.disk_bus,
            delete_on_termination=self.delete_on_termination,
        )

    def as_dict(self, *, masked: bool = True) -> dict[str, Any]:
        info = dict(self.connection_info)
        return {
            "id": self.id,
            "instance_uuid": self.instance_uuid,
            "volume_id": self.volume_id,
            "mountpoint": self.mountpoint,
            "connection_info": mask_secrets(info) if masked else info,
            "delete_on_termination": self.delete_on_termination,
            "disk_bus": self.disk_bus,
            "attached_at": _iso(self.attached_at),
        }


@dataclass(frozen=True)
class AttachmentRecord:
    """A live instance a volume is attached to. `connection_info` holds secrets: repr masks
    it by leaving it out."""

    instance_uuid: str
    name: str
    host: str | None
    mountpoint: str
    connection_info: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], *,
                 connection_info: Mapping[str, Any] | None = None) -> AttachmentRecord:
        """The record of a row; `connection_info` as the store opened it (default: the
        column's JSON as it is)."""
        return cls(
            instance_uuid=row["uuid"],
            name=row["name"],
            host=row["host"],
            mountpoint=row["mountpoint"],
            connection_info=(json.loads(row["connection_info"]) if connection_info is None
                             else connection_info),
        )


@dataclass(frozen=True)
class VifRecord:
    id: str
    instance_uuid: str
    address: str
    network: str | None
    bridge: str | None
    model: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> VifRecord:
        return cls(
            id=row["id"],
            instance_uuid=row["instance_uuid"],
            address=row["address"],
            network=row["network"],
            bridge=row["bridge"],
            model=row["model"],
        )

    def to_vif(self) -> Vif:
        return Vif(
            id=self.id,
            address=self.address,
            network=self.network,
            bridge=self.bridge,
            model=self.model,
        )

    def as_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class HostRecord:
    name: str
    driver: str | None
    status: str
    last_seen: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> HostRecord:
        return cls(row["name"], row["driver"], row["status"], row["last_seen"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "driver": self.driver,
            "status": self.status,
            "last_seen": _iso(self.last_seen),
        }


@dataclass(frozen=True)
class EventRecord:
    id: int
    instance_uuid: str
    event: str
    timestamp: dt.datetime
    host: str | None
    detail: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> EventRecord:
        return cls(
            row["id"], row["instance_uuid"], row["event"], row["timestamp"], row["host"],
            row["detail"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instance_uuid": self.instance_uuid,
            "event": self.event,
            "timestamp": _iso(self.timestamp),
            "host": self.host,
            "detail": self.detail,
        }
