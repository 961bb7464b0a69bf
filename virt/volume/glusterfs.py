"""GlusterFS volumes: Nova's glusterfs connection_info as a validated volume, and its connector.

Nova/Cinder's shape: `{"driver_volume_type": "glusterfs", "data": {"export":
"host[:port]:/volume[/subdir]", "name": "<file in it>", "format": "raw"|"qcow2",
"options": "-o backup-volfile-servers=h2:h3"}}`. The connector probes through libgfapi (the
library QEMU's gluster driver uses) in a child process, never through a FUSE mount; GlusterFS
connections carry no secrets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from virt.errors import (
    InvalidRequest,
    VolumeAuthError,
    VolumeError,
    VolumeNotFound,
    VolumeUnreachable,
)
from virt.model import VolumeConnection
from virt.volume.base import ProbeResult, host_port, register_connector, valid_host

PROTOCOL = "glusterfs"
DEFAULT_PORT = 24007
DEFAULT_TIMEOUT_S = 10.0
FORMATS = ("raw", "qcow2")
QCOW2_MAGIC = b"QFI\xfb"
#: The libgfapi probe, run by file path in a child process (it imports nothing of virtkit).
GFAPI_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gfapi.py")

_VOLNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_@+=][A-Za-z0-9._@+=-]{0,254}$")
_MOUNT_OPT_RE = re.compile(r"^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.:/@+-]*)?$")
_HOSTLIST_RE = re.compile(r"\[[^\]]*\]|[^:]+")
_BACKUP_KEYS = ("backup-volfile-servers", "backupvolfile-server")


def _invalid(field_name: str, problem: str, hint: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"GlusterFS connection_info field '{field_name}' {problem}", hint=hint)


@dataclass(frozen=True)
class GlusterServer:
    """A Gluster server (glusterd) that serves the volume's volfile: host and TCP port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return host_port(self.host, self.port)



def _parse_host_port(text: str, field_name: str, default_port: int) -> GlusterServer:
    """'host', 'host:port', '[v6]' or '[v6]:port'."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise _invalid(field_name, f"{text!r} is not '[address]' or '[address]:port'")
        host, port_text = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise _invalid(field_name, f"{text!r}: an IPv6 address goes in brackets",
                       hint="e.g. [2001:db8::1]:/volume")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _invalid(field_name, f"has an invalid port {port_text!r}",
                           hint=f"use 1-65535; glusterd listens on {DEFAULT_PORT}")
        port = int(port_text)
    if not valid_host(host):
        raise _invalid(field_name, f"has an invalid host {host!r}")
    return GlusterServer(host, port)


def _parse_relpath(value: str, field_name: str) -> str:
    segments = value.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT_RE.match(segment):
            raise _invalid(field_name, f"{value!r} is not a relative path of plain names",
                           hint="letters, digits and ._@+=- in each part; no '..' or '//'")
    return "/".join(segments)


def parse_export(value: Any) -> tuple[GlusterServer, str, str]:
    """'host[:port]:/volume[/subdir]' -> (server, volume, subdir ('' for the whole volume))."""
    if not isinstance(value, str) or not value.strip():
        raise _invalid("export", "is missing", hint="e.g. 192.0.2.10:/volume or "
                       "gluster1.example.com:24007:/volume")
    text = value.strip()
    start = text.find("]") + 1 if text.startswith("[") else 0
    sep = text.find(":/", start)
    if sep <= 0:
        raise _invalid("export", f"{text!r} is not 'host[:port]:/volume'",
                       hint="the server, a colon, then the volume name with a leading slash")
    server = _parse_host_port(text[:sep], "export", DEFAULT_PORT)
    volume, _, subdir = text[sep + 2:].strip("/").partition("/")
    if not _VOLNAME_RE.match(volume):
        raise _invalid("export", f"has an invalid volume name {volume!r}",
                       hint="a Gluster volume name: letters, digits, '-' and '_'")
    return server, volume, (_parse_relpath(subdir, "export") if subdir else "")


def _parse_options(value: Any, primary: GlusterServer) -> tuple[tuple[GlusterServer, ...],
                                                                tuple[str, ...]]:
    """Cinder's share options ('-o backup-volfile-servers=h2:h3,...') or a list of
    'host[:port]' backup servers -> (backup servers, other mount options)."""
    if value in (None, ""):
        return (), ()
    if isinstance(value, list | tuple):
        if not all(isinstance(v, str) and v for v in value):
            raise _invalid("options", "must be a string of mount options or a list of servers")
        return tuple(_parse_host_port(v, "options", primary.port) for v in value), ()
    if not isinstance(value, str):
        raise _invalid("options", "must be a string of mount options or a list of servers")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise _invalid("options", f"cannot be split into words ({exc})") from None
    backups: list[GlusterServer] = []
    others: list[str] = []
    for word in words:
        if word == "-o":
            continue
        for option in filter(None, word.split(",")):
            key, _, val = option.partition("=")
            if key in _BACKUP_KEYS:
                hosts = _HOSTLIST_RE.findall(val)  # h1:h2:[v6]: hosts only, no ports
                if not hosts:
                    raise _invalid("options", f"{key} names no server")
                backups += [_parse_host_port(h, "options", primary.port) for h in hosts]
            elif _MOUNT_OPT_RE.match(option):
                others.append(option)
            else:
                raise _invalid("options", f"has an invalid mount option {option!r}")
    return tuple(backups), tuple(others)


@dataclass(frozen=True)
class GlusterVolume:
    """A validated GlusterFS connection_info: the file `name` on `volume` (under `subdir`)."""

    servers: tuple[GlusterServer, ...]  # the export's server first, then the backups
    volume: str
    name: str
    format: str = "raw"
    subdir: str = ""
    mount_options: tuple[str, ...] = ()
    volume_id: str | None = None

    @property
    def server(self) -> GlusterServer:
        return self.servers[0]

    @property
    def export(self) -> str:
        """The export as Cinder writes it: 'host[:port]:/volume[/subdir]' (port if not 24007)."""
        host = f"[{self.server.host}]" if ":" in self.server.host else self.server.host
        port = f":{self.server.port}" if self.server.port != DEFAULT_PORT else ""
        sub = f"/{self.subdir}" if self.subdir else ""
        return f"{host}{port}:/{self.volume}{sub}"

    @property
    def path(self) -> str:
        """The file's path inside the Gluster volume (no leading slash)."""
        return f"{self.subdir}/{self.name}" if self.subdir else self.name

    @property
    def source_name(self) -> str:
        """'volume/path', the name libvirt's gluster network disk takes."""
        return f"{self.volume}/{self.path}"

    @property
    def url(self) -> str:
        """QEMU's gluster URL of the file."""
        return f"gluster://{self.server}/{self.source_name}"

    def __str__(self) -> str:
        return f"GlusterFS volume {self.source_name} at {self.server}"


def parse_glusterfs_volume(conn: VolumeConnection | Mapping[str, Any]) -> GlusterVolume:
    """Validate Nova's glusterfs connection_info; InvalidRequest names the field that is wrong."""
    if not isinstance(conn, VolumeConnection):
        conn = VolumeConnection.from_connection_info(conn)
    if conn.driver_volume_type.lower() != PROTOCOL:
        raise InvalidRequest(
            f"connection_info driver_volume_type is {conn.driver_volume_type!r}, not 'glusterfs'")
    data = conn.data
    server, volume, subdir = parse_export(data.get("export"))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _invalid("name", "is missing", hint="the volume's file in the export, "
                       "e.g. volume-<uuid>")
    fmt = data.get("format") or "raw"
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise _invalid("format", f"{fmt!r} is not supported", hint="raw or qcow2")
    backups, options = _parse_options(data.get("options"), server)
    servers = tuple(dict.fromkeys((server, *backups)))
    return GlusterVolume(
        servers=servers, volume=volume, name=_parse_relpath(name.strip().strip("/"), "name"),
        format=fmt.lower(), subdir=subdir, mount_options=options,
        volume_id=(str(data["volume_id"]) if data.get("volume_id") else conn.serial),
    )


def reachable_servers(volume: GlusterVolume, timeout: float) -> list[GlusterServer]:
    """The volume's servers that accept a TCP connection, in order; VolumeUnreachable naming
    why each failed if none does."""
    up: list[GlusterServer] = []
    failures: list[str] = []
    for server in volume.servers:
        try:
            with socket.create_connection((server.host, server.port), timeout=min(timeout, 5.0)):
                up.append(server)
        except TimeoutError:
            failures.append(f"{server}: connection timed out")
        except OSError as exc:
            failures.append(f"{server}: {exc.strerror or exc}")
    if not up:
        raise VolumeUnreachable(f"{volume}: no Gluster server reachable ({'; '.join(failures)})",
                                hint="check the storage network and that glusterd runs")
    return up


def _gfapi_error(volume: GlusterVolume, server: GlusterServer, step: str, errno: int) -> VolumeError:
    why = os.strerror(errno) if errno else "no reason given"
    if step == "load":
        return VolumeError("libgfapi is not installed on this host",
                           hint="apt-get install glusterfs-client libgfapi0 (qemu-block-extra "
                           "for QEMU's gluster driver)")
    if step == "init":
        if errno in (0, 2, 22):  # glusterd answered but has no such (started) volume
            return VolumeNotFound(f"{volume}: {server} serves no started volume "
                                  f"{volume.volume!r} ({why})")
        return VolumeUnreachable(f"{volume}: cannot fetch the volume from {server} ({why})")
    if step == "open" and errno == 2:
        return VolumeNotFound(f"{volume}: Gluster volume {volume.volume!r} has no file "
                              f"{volume.path!r}")
    if errno in (1, 13):
        return VolumeAuthError(f"{volume}: access refused ({why})",
                               hint="check auth.allow on the Gluster volume")
    return VolumeError(f"{volume}: {step} failed ({why})")


class GlusterConnector:
    """Probe GlusterFS volume files through libgfapi; QEMU then reaches them natively."""

    protocol = PROTOCOL

    def probe(self, conn: VolumeConnection, *, timeout: float = DEFAULT_TIMEOUT_S) -> ProbeResult:
        """Reach a server, fetch the volume and open the file (in a child process).

        Raises VolumeUnreachable (no server answers), VolumeNotFound (no such volume or
        file), VolumeAuthError (refused), VolumeError (a qcow2 file that is not qcow2, ...).
        """
        volume = parse_glusterfs_volume(conn)
        started = time.monotonic()
        servers = reachable_servers(volume, timeout)
        left = max(0.5, timeout - (time.monotonic() - started))
        args = [sys.executable, "-I", GFAPI_PROBE, volume.volume, volume.path,
                *(str(s) for s in servers)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=left,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise VolumeUnreachable(f"{volume}: the volume did not answer within "
                                    f"{timeout:g}s") from None
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise VolumeError(f"{volume}: the libgfapi probe failed (exit {done.returncode}: "
                              f"{done.stderr.strip()[-200:]})") from None
        if "error" in result:
            raise _gfapi_error(volume, servers[0], result["error"], int(result.get("errno", 0)))
        return ProbeResult(self._size(volume, result), 512, str(servers[0]))

    @staticmethod
    def _size(volume: GlusterVolume, result: Mapping[str, Any]) -> int:
        header = bytes.fromhex(str(result.get("header", "")))
        if volume.format == "qcow2":
            if not header.startswith(QCOW2_MAGIC) or len(header) < 32:
                raise VolumeError(f"{volume}: connection_info says qcow2 but the file is not "
                                  f"a qcow2 image", hint="set data.format to raw")
            return int.from_bytes(header[24:32], "big")
        return int(result["size"])

    def connect(self, conn: VolumeConnection, *, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Check the file and return how QEMU's gluster driver reaches it (nothing on the host)."""
        volume = parse_glusterfs_volume(conn)
        found = self.probe(conn, timeout=timeout)
        return {
            "type": "network",
            "protocol": "gluster",
            "name": volume.source_name,
            "hosts": [{"name": s.host, "port": s.port} for s in volume.servers],
            "format": volume.format,
            "size_bytes": found.size_bytes,
        }

    def disconnect(self, conn: VolumeConnection) -> None:
        """Native access sets nothing up on the host; validate and return."""
        parse_glusterfs_volume(conn)


register_connector(PROTOCOL, GlusterConnector)
