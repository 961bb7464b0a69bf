"""Typed wrappers of vmadm, imgadm, zfs, zpool, sysinfo and zlogin over an executor.

Each wrapper reads the tool's exit code and output as research/smartos.md describes them
(data on stdout, messages on stderr; vmadm's "already running/not running" exit 0; imgadm's
exit 3 for an image that is not installed). A failure raises `ToolFailed` with the tool's own
message (any secret masked); `Tools.translate` turns it into virtkit's error.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from drivers.smartos.connection import Completed, Executor, classify, describe
from virt.driver.errors import EngineErrors, EngineFault, FaultKind
from virt.masking import MASK

LOG = logging.getLogger(__name__)

#: imgadm's exit code for "image not installed" (ImageNotInstalled).
IMAGE_NOT_INSTALLED = 3
USAGE = 2


class ToolFailed(Exception):
    """A tool ran and exited non-zero: its command line and its own message."""

    def __init__(self, done: Completed, secrets: Sequence[str] = ()) -> None:
        message = done.err or done.out.strip() or f"exit code {done.returncode}"
        for secret in secrets:
            if secret:
                message = message.replace(secret, MASK)
        super().__init__(f"'{describe(done.argv)}' failed (exit {done.returncode}): {message}")
        self.tool = describe(done.argv[:1])
        self.returncode = done.returncode
        self.message = message


_INVALID = ("invalid value", "missing required", "invalid nic tag", "is not a valid",
            "invalid or missing", "invalid ip", "cannot specify", "must be", "usage:")
_INVALID_STATE = ("cannot start vm from state", "login allowed only to running zones",
                  "must be \"stopped\"", "is not running")
_NOT_FOUND = ("no such zone configured", "not found", "imagenotinstalled",
              "does not exist")


def fault_of(exc: BaseException) -> EngineFault | None:
    """What an executor error or a tool's failure means."""
    fault = classify(exc)
    if fault is not None or not isinstance(exc, ToolFailed):
        return fault
    text = exc.message.lower()
    said = f"{exc.tool} said: {exc.message}"
    if any(p in text for p in _NOT_FOUND) or exc.returncode == IMAGE_NOT_INSTALLED:
        return EngineFault(FaultKind.NOT_FOUND, said)
    if "already exists" in text:
        return EngineFault(FaultKind.EXISTS, said)
    if any(p in text for p in _INVALID_STATE):
        return EngineFault(FaultKind.INVALID_STATE, said)
    if exc.returncode == USAGE or any(p in text for p in _INVALID):
        return EngineFault(FaultKind.INVALID_REQUEST, said)
    if "permission denied" in text or "cannot run because" in text:
        return EngineFault(FaultKind.ACCESS_DENIED, said,
                           hint="the SmartOS tools must run as root in the global zone")
    return EngineFault(FaultKind.FAILED, said)


def parse_list(text: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of `vmadm list -p -H -o fields` (':'-joined; the last field may hold ':')."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            values = line.split(":", len(fields) - 1)
            values += [""] * (len(fields) - len(values))
            rows.append(dict(zip(fields, values, strict=True)))
    return rows


class Tools:
    """The SmartOS commands a driver needs, on one executor."""

    def __init__(self, executor: Executor, *, zpool: str = "zones") -> None:
        self.executor = executor
        self.zpool = zpool
        self.errors = EngineErrors("smartos", fault_of)
        #: `with tools.translate("do x", instance=ident):` -- see EngineErrors.translate.
        self.translate = self.errors.translate

    def _ok(self, tool: str, *args: str, stdin: bytes | None = None,
            timeout: float | None = None, secrets: Sequence[str] = (),
            stdout_to: str | None = None) -> Completed:
        done = self.executor.run(tool, *args, stdin=stdin, timeout=timeout, stdout_to=stdout_to)
        if done.returncode != 0:
            raise ToolFailed(done, secrets)
        return done

    # -- vmadm -----------------------------------------------------------------------------

    def vm_get(self, uuid: str) -> dict[str, Any] | None:
        """`vmadm get`: the VM object, or None if there is no such VM."""
        done = self.executor.run("vmadm", "get", uuid)
        if done.returncode != 0:
            failure = ToolFailed(done)
            fault = fault_of(failure)
            if fault is not None and fault.kind is FaultKind.NOT_FOUND:
                return None
            raise failure
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def vm_list(self, fields: Sequence[str],
                filters: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """`vmadm list -p -H -o fields [k=v ...]` as dicts (put free text such as alias last)."""
        filters = filters or {}
        args = ["list", "-p", "-H", "-o", ",".join(fields), "-s", "uuid"]
        args += [f"{key}={value}" for key, value in sorted(filters.items())]
        return parse_list(self._ok("vmadm", *args).out, fields)

    def vm_create(self, payload: Mapping[str, Any], *, timeout: float) -> None:
        """`vmadm create` with the payload on stdin; waits for provisioning (bounded)."""
        self._ok("vmadm", "create", stdin=json.dumps(payload).encode(), timeout=timeout)

    def vm_start(self, uuid: str) -> None:
        """`vmadm start` ("already running" is exit 0: a no-op)."""
        self._ok("vmadm", "start", uuid)

    def vm_stop(self, uuid: str, *, force: bool = False, grace: float | None = None,
                bound: float | None = None) -> None:
        """`vmadm stop [-F] [-t grace]` ("already not running" is exit 0), killed after
        `bound` seconds (default: the command timeout, plus the grace)."""
        args = ["stop", uuid]
        if force:
            args.append("-F")
        if grace is not None:
            args += ["-t", str(max(1, math.ceil(grace)))]
        if bound is None and grace is not None:
            bound = self.executor.timeout + grace
        self._ok("vmadm", *args, timeout=bound)

    def vm_reboot(self, uuid: str, *, force: bool = False, bound: float | None = None) -> None:
        """`vmadm reboot [-F]`, killed after `bound` seconds (default: the command timeout)."""
        self._ok("vmadm", "reboot", uuid, *(["-F"] if force else []), timeout=bound)

    def vm_delete(self, uuid: str) -> None:
        self._ok("vmadm", "delete", uuid)

    def vm_update(self, uuid: str, payload: Mapping[str, Any]) -> None:
        """`vmadm update <uuid>` with a JSON payload on stdin (set_*/remove_* keys)."""
        self._ok("vmadm", "update", uuid, stdin=json.dumps(payload).encode())

    # -- imgadm ----------------------------------------------------------------------------

    def image_get(self, uuid: str) -> dict[str, Any] | None:
        """`imgadm get -P pool`: {manifest, zpool, ...}, or None if not installed (exit 3)."""
        done = self.executor.run("imgadm", "get", "-P", self.zpool, uuid)
        if done.returncode == IMAGE_NOT_INSTALLED:
            return None
        if done.returncode != 0:
            raise ToolFailed(done)
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def image_install(self, manifest_path: str, file_path: str, *, timeout: float) -> None:
        """`imgadm install -P pool -m MANIFEST -f FILE` (files on the global zone)."""
        self._ok("imgadm", "install", "-P", self.zpool, "-m", manifest_path, "-f", file_path,
                 timeout=timeout)

    def image_delete(self, uuid: str) -> bool:
        """`imgadm delete`; False if it was not installed."""
        done = self.executor.run("imgadm", "delete", "-P", self.zpool, uuid)
        if done.returncode == IMAGE_NOT_INSTALLED:
            return False
        if done.returncode != 0:
            raise ToolFailed(done)
        return True

    # -- zfs / zpool / sysinfo -------------------------------------------------------------

    def zfs_children(self, name: str) -> list[str]:
        """`zfs list -H -o name -d 1 -t filesystem,volume NAME`: it and its children."""
        return self._ok("zfs", "list", "-H", "-o", "name", "-d", "1", "-t",
                        "filesystem,volume", name).out.split()

    def zfs_exists(self, name: str) -> bool:
        done = self.executor.run("zfs", "list", "-H", "-o", "name", "-t", "all", name)
        if done.returncode == 0:
            return True
        if "does not exist" in done.err:
            return False
        raise ToolFailed(done)

    def zfs_get(self, prop: str, name: str) -> str:
        return self._ok("zfs", "get", "-Hp", "-o", "value", prop, name).out.strip()

    def zfs_snapshot(self, snapshot: str) -> None:
        self._ok("zfs", "snapshot", snapshot)

    def zfs_destroy(self, name: str, *, recursive: bool = False) -> None:
        self._ok("zfs", "destroy", *(["-r"] if recursive else []), name)

    def zfs_send(self, snapshot: str, path: str, *, timeout: float) -> None:
        """`zfs send SNAPSHOT > PATH` on the global zone (the stream never comes here)."""
        self._ok("zfs", "send", snapshot, stdout_to=path, timeout=timeout)

    def zpool_list(self) -> dict[str, int]:
        """`zpool list -Hp -o name,size,allocated,free POOL` as bytes."""
        line = self._ok("zpool", "list", "-Hp", "-o", "name,size,allocated,free",
                        self.zpool).out.split()
        return {"size": int(line[1]), "allocated": int(line[2]), "free": int(line[3])}

    def sysinfo(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._ok("sysinfo").stdout)
        return data

    # -- zlogin ----------------------------------------------------------------------------

    def zlogin(self, uuid: str, command: Iterable[str], *, stdin: bytes | None = None,
               secrets: Sequence[str] = ()) -> Completed:
        """`zlogin -Q <uuid> command...` with `stdin` (which may be secret) on its stdin."""
        return self._ok("zlogin", "-Q", uuid, *command, stdin=stdin, secrets=secrets)
