"""The small interface every volume connector implements (os-brick style: one per protocol)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from virt.errors import InvalidRequest
from virt.model import VolumeConnection

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def valid_host(host: str) -> bool:
    """Whether `host` is an IP address or a DNS host name (a portal's or a server's)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.match(host)) and len(host) <= 253


def host_port(host: str, port: int) -> str:
    """'host:port', an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found: the volume is reachable, our credentials work, it has this size."""

    size_bytes: int
    block_size: int
    path: str  # which path answered (a portal for iSCSI), for the report; never a secret


class VolumeConnector(Protocol):
    """Connects a host to a volume of one protocol."""

    protocol: str

    def probe(self, conn: VolumeConnection, *, timeout: float = ...) -> ProbeResult:
        """Log in and check the volume exists; raise VolumeError subclasses otherwise."""
        ...

    def connect(self, conn: VolumeConnection, *, timeout: float = ...) -> dict[str, Any]:
        """Make the volume usable from this host; return how to reach it (no secrets)."""
        ...

    def disconnect(self, conn: VolumeConnection) -> None:
        """Undo `connect`; a no-op when nothing is connected."""
        ...


_FACTORIES: dict[str, Callable[[], VolumeConnector]] = {}


def register_connector(protocol: str, factory: Callable[[], VolumeConnector]) -> None:
    """Make `connector_for` return `factory()` for connections of `protocol`."""
    _FACTORIES[protocol.lower()] = factory


def connector_for(conn: VolumeConnection) -> VolumeConnector:
    """The connector for `conn.driver_volume_type`, or InvalidRequest naming the known ones."""
    factory = _FACTORIES.get(conn.driver_volume_type.lower())
    if factory is None:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise InvalidRequest(
            f"unsupported driver_volume_type {conn.driver_volume_type!r}",
            hint=f"supported: {known}",
        )
    return factory()
