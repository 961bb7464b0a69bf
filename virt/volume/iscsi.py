"""iSCSI volumes: Nova's iSCSI connection_info as a validated target, and its connector.

The connector talks to the target from userspace through libiscsi, called in this process
(virt.volume.libiscsi), so it works where the kernel initiator does not, and the CHAP
credentials reach no child process: never a command line, an environment, a log line or an
error message.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from virt.errors import (
    InvalidRequest,
    VolumeAuthError,
    VolumeError,
    VolumeNotFound,
    VolumeUnreachable,
)
from virt.masking import MASK, scrub
from virt.model import VolumeConnection
from virt.volume import libiscsi
from virt.volume.base import ProbeResult, host_port, register_connector, valid_host

DEFAULT_PORT = 3260
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"

_IQN_RE = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[A-Za-z0-9][A-Za-z0-9.:_-]*|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$"
)
_MAX_LUN = 16383


def _invalid(field_name: str, problem: str, hint: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"iSCSI connection_info field '{field_name}' {problem}", hint=hint)


@dataclass(frozen=True)
class Portal:
    """An iSCSI portal: host (name, IPv4 or IPv6) and TCP port."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, value: Any, field_name: str = "target_portal") -> Portal:
        """Parse 'host', 'host:port', '[v6]:port' or a bare IPv6 address."""
        if not isinstance(value, str) or not value.strip():
            raise _invalid(field_name, "must be a non-empty 'host:port' string",
                           hint="e.g. 192.0.2.10:3260")
        text = value.strip()
        host, port_text = text, ""
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise _invalid(field_name, f"{text!r} has an unclosed '['")
            host, rest = text[1:end], text[end + 1:]
            if rest and not rest.startswith(":"):
                raise _invalid(field_name, f"{text!r} is not '[address]:port'")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        port = DEFAULT_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _invalid(field_name, f"has an invalid port {port_text!r}",
                               hint="use 1-65535; iSCSI's default is 3260")
            port = int(port_text)
        if not valid_host(host):
            raise _invalid(field_name, f"has an invalid host {host!r}")
        return cls(host, port)

    def __str__(self) -> str:
        return host_port(self.host, self.port)



def _parse_iqn(value: Any, field_name: str = "target_iqn") -> str:
    if not isinstance(value, str) or not _IQN_RE.match(value.strip()):
        raise _invalid(field_name, f"{value!r} is not an iSCSI name",
                       hint="expected iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex> or naa.<hex>")
    return value.strip()


def _parse_lun(value: Any, field_name: str = "target_lun") -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _invalid(field_name, f"{value!r} is not a LUN number")
    text = str(value).strip()
    if not text.isdigit() or int(text) > _MAX_LUN:
        raise _invalid(field_name, f"{value!r} is not a LUN number (0-{_MAX_LUN})")
    return int(text)


@dataclass(frozen=True)
class IscsiPath:
    """One way to the LUN: portal + target name + LUN (several with multipath)."""

    portal: Portal
    iqn: str
    lun: int

    @property
    def url(self) -> str:
        """libiscsi URL, without credentials."""
        return f"iscsi://{self.portal}/{self.iqn}/{self.lun}"


@dataclass(frozen=True)
class IscsiTarget:
    """A validated iSCSI connection_info. repr/str never show the CHAP password."""

    portal: Portal
    target_iqn: str
    target_lun: int
    auth_method: str | None = None
    auth_username: str | None = None
    auth_password: str | None = field(default=None, repr=False)
    paths: tuple[IscsiPath, ...] = ()
    volume_id: str | None = None

    @property
    def primary(self) -> IscsiPath:
        return IscsiPath(self.portal, self.target_iqn, self.target_lun)

    @property
    def source_name(self) -> str:
        """'IQN/LUN', the name libvirt's iSCSI network disk takes."""
        return f"{self.target_iqn}/{self.target_lun}"

    @property
    def uses_chap(self) -> bool:
        return self.auth_method == "CHAP"

    def all_paths(self) -> tuple[IscsiPath, ...]:
        """The primary path first, then the other multipath paths, without duplicates."""
        seen = [self.primary]
        for path in self.paths:
            if path not in seen:
                seen.append(path)
        return tuple(seen)

    def __repr__(self) -> str:
        auth = f", auth=CHAP user={self.auth_username!r} password={MASK}" if self.uses_chap else ""
        return f"IscsiTarget({self.portal} {self.source_name}{auth})"

    __str__ = __repr__


def parse_iscsi_target(conn: VolumeConnection | Mapping[str, Any]) -> IscsiTarget:
    """Validate Nova's iSCSI connection_info; InvalidRequest names the field that is wrong."""
    if not isinstance(conn, VolumeConnection):
        conn = VolumeConnection.from_connection_info(conn)
    if conn.driver_volume_type.lower() != "iscsi":
        raise InvalidRequest(
            f"connection_info driver_volume_type is {conn.driver_volume_type!r}, not 'iscsi'"
        )
    data = conn.data
    paths = _parse_multipath(data)
    if "target_portal" in data or not paths:
        for name in ("target_portal", "target_iqn", "target_lun"):
            if data.get(name) in (None, ""):
                raise _invalid(name, "is missing", hint="Nova/Cinder iSCSI connection_info "
                               "needs target_portal, target_iqn and target_lun")
        portal = Portal.parse(data["target_portal"])
        iqn = _parse_iqn(data["target_iqn"])
        lun = _parse_lun(data["target_lun"])
    else:
        portal, iqn, lun = paths[0].portal, paths[0].iqn, paths[0].lun
    method, user, password = _parse_auth(data)
    return IscsiTarget(
        portal=portal, target_iqn=iqn, target_lun=lun, auth_method=method,
        auth_username=user, auth_password=password, paths=paths,
        volume_id=(str(data["volume_id"]) if data.get("volume_id") else conn.serial),
    )


def _parse_multipath(data: Mapping[str, Any]) -> tuple[IscsiPath, ...]:
    names = ("target_portals", "target_iqns", "target_luns")
    present = [n for n in names if data.get(n) is not None]
    if not present:
        return ()
    if len(present) != 3:
        missing = ", ".join(n for n in names if n not in present)
        raise _invalid(missing, "is missing", hint="multipath needs target_portals, "
                       "target_iqns and target_luns together")
    lists = [data[n] for n in names]
    for name, value in zip(names, lists, strict=True):
        if not isinstance(value, list | tuple) or not value:
            raise _invalid(name, "must be a non-empty list")
    if not len(lists[0]) == len(lists[1]) == len(lists[2]):
        raise _invalid("target_portals", "target_iqns and target_luns differ in length")
    return tuple(
        IscsiPath(Portal.parse(p, f"target_portals[{i}]"), _parse_iqn(q, f"target_iqns[{i}]"),
                  _parse_lun(n, f"target_luns[{i}]"))
        for i, (p, q, n) in enumerate(zip(*lists, strict=True))
    )


def _parse_auth(data: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    method = data.get("auth_method")
    if method in (None, "", "None", "none"):
        return None, None, None
    if not isinstance(method, str) or method.upper() != "CHAP":
        raise _invalid("auth_method", f"{method!r} is not supported", hint="use CHAP or omit it")
    user, password = data.get("auth_username"), data.get("auth_password")
    if not isinstance(user, str) or not user:
        raise _invalid("auth_username", "is missing", hint="auth_method CHAP needs a username")
    if not isinstance(password, str) or not password:
        raise _invalid("auth_password", "is missing", hint="auth_method CHAP needs a password")
    if "\0" in password or "\n" in password:
        raise _invalid("auth_password", "contains a NUL or newline character")
    return "CHAP", user, password


def default_initiator_name() -> str:
    """This host's initiator IQN: open-iscsi's file if present, else one derived from the host."""
    try:
        with open(DEFAULT_INITIATOR_FILE, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("InitiatorName="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    host = re.sub(r"[^a-z0-9.-]", "-", socket.gethostname().lower()) or "localhost"
    return f"iqn.2024-01.org.virtkit:{host}"


class IscsiConnector:
    """Probe and connect iSCSI LUNs from userspace (libiscsi), with CHAP kept off argv."""

    protocol = "iscsi"

    def __init__(self, initiator: str | None = None) -> None:
        self.initiator = initiator or default_initiator_name()

    def probe(self, conn: VolumeConnection, *, timeout: float = DEFAULT_TIMEOUT_S) -> ProbeResult:
        """Reach a portal, log in (CHAP if given), READ CAPACITY; try multipath paths in order.

        Raises VolumeUnreachable (no portal answers), VolumeAuthError (credentials refused),
        VolumeNotFound (no such target or LUN), VolumeError (anything else).
        """
        target = parse_iscsi_target(conn)
        return self._read_capacity(target, reachable_path(target, timeout), timeout)

    def connect(self, conn: VolumeConnection, *, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Check the LUN and return how QEMU's own initiator reaches it (no secrets).

        Nothing is set up on the host: QEMU logs in itself, so `disconnect` has nothing to undo.
        """
        target = parse_iscsi_target(conn)
        found = self.probe(conn, timeout=timeout)
        portal = Portal.parse(found.path)
        return {
            "type": "network",
            "protocol": "iscsi",
            "name": f"{target.target_iqn}/{target.target_lun}",
            "hosts": [{"name": portal.host, "port": portal.port}],
            "auth_method": target.auth_method,
            "auth_username": target.auth_username,
            "size_bytes": found.size_bytes,
            "initiator": self.initiator,
        }

    def disconnect(self, conn: VolumeConnection) -> None:
        """No host-side session exists in native mode; validate and return."""
        parse_iscsi_target(conn)

    def _read_capacity(self, target: IscsiTarget, path: IscsiPath, timeout: float) -> ProbeResult:
        try:
            capacity = libiscsi.read_capacity(
                initiator=self.initiator, portal=str(path.portal), iqn=path.iqn, lun=path.lun,
                username=target.auth_username if target.uses_chap else None,
                password=target.auth_password if target.uses_chap else None, timeout=timeout)
        except libiscsi.LibIscsiError as exc:
            if not libiscsi.available():
                raise VolumeError(str(exc), hint="apt-get install libiscsi7") from None
            raise _login_error(scrub(str(exc), target.auth_password), target, path) from None
        return ProbeResult(capacity.size_bytes, capacity.block_size, str(path.portal))


def reachable_path(target: IscsiTarget, timeout: float) -> IscsiPath:
    """The first of the target's paths (multipath in order) whose portal accepts a TCP
    connection; VolumeUnreachable naming why each failed if none does."""
    failures: list[str] = []
    for path in target.all_paths():
        reason = _tcp_reachable(path.portal, timeout)
        if reason is None:
            return path
        failures.append(reason)
    raise VolumeUnreachable(
        f"iSCSI volume {target.source_name}: no portal reachable ({'; '.join(failures)})",
        hint="check the storage network and that the target is up",
    )


def _tcp_reachable(portal: Portal, timeout: float) -> str | None:
    """None if a TCP connection to the portal opens within `timeout`, else why not."""
    try:
        with socket.create_connection((portal.host, portal.port), timeout=min(timeout, 5.0)):
            return None
    except TimeoutError:
        return f"{portal}: connection timed out"
    except OSError as exc:
        return f"{portal}: {exc.strerror or exc}"


def _login_error(output: str, target: IscsiTarget, path: IscsiPath) -> VolumeError:
    where = f"iSCSI volume {target.source_name} at {path.portal}"
    if "Authentication failure" in output or "Authorization failure" in output:
        if target.uses_chap:
            return VolumeAuthError(f"{where}: the target refused CHAP user "
                                   f"{target.auth_username!r}", hint="check the CHAP secret")
        return VolumeAuthError(f"{where}: the target requires authentication",
                               hint="connection_info needs auth_method CHAP and credentials")
    if "Target not found" in output or "Not found" in output:
        return VolumeNotFound(f"{where}: the portal has no target {target.target_iqn}")
    if "LOGICAL_UNIT_NOT_SUPPORTED" in output:
        return VolumeNotFound(f"{where}: the target has no LUN {path.lun}")
    if "connect" in output.lower():
        return VolumeUnreachable(f"{where}: cannot connect ({_last_line(output)})")
    return VolumeError(f"{where}: login or READ CAPACITY failed ({_last_line(output)})")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


register_connector("iscsi", IscsiConnector)
