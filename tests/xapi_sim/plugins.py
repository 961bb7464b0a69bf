"""dom0 plugins (`host.call_plugin`) and the domains' Xen store trees.

The `xenstore` plugin (also `xenstore.py`, as Nova named it) reads, writes, lists, removes
and waits for paths under `/local/domain/<dom_id>/`, through a real Xen store client
(guest_agent's wire client) to the store the simulator was given: the test xenstore server in
unit tests, the test bed's xenstored otherwise. Functions (args are a string map):
`read_record`/`read` (dom_id, path[, ignore_missing_path]), `write_record`/`write`
(dom_id, path, value), `list_records`/`ls` (dom_id, path) -> JSON of the subtree,
`delete_record`/`rm` (dom_id, path), `wait_record`/`watch` (dom_id, path, timeout) -> the value
once the path exists, through a xenstore watch. A plugin error is
XENAPI_PLUGIN_EXCEPTION [fn, type, message]; an unknown plugin XENAPI_MISSING_PLUGIN [name].
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from guest_agent.wire import XenstoreClient, XenstoreError

from .errors import XapiError

if TYPE_CHECKING:
    from .core import Core

_REL_PATH = re.compile(r"^[A-Za-z0-9_@-]+(/[A-Za-z0-9_@-]+)*$")


class DomainStore:
    """The simulator's dom0 connection to a Xen store: domain trees and plugin access."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self.client = XenstoreClient(path, timeout=timeout)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def base(self, domid: int) -> str:
        return f"/local/domain/{domid}"

    def create(self, domid: int, name: str, xenstore_data: dict[str, str]) -> None:
        """The tree a toolstack writes for a new domain (guest-readable, data/ guest-owned)."""
        base = self.base(domid)
        ro = ["n0", f"r{domid}"]
        c = self.client
        with self._lock:
            for node, value in (("", ""), ("name", name), ("domid", str(domid)),
                                ("vm-data", ""), ("data", "")):
                path = f"{base}/{node}" if node else base
                c.write(path, value)
                if node != "data":
                    c.set_perms(path, ro)
                    continue
                try:
                    c.set_perms(path, [f"n{domid}"])
                except XenstoreError:  # a real xenstored: no such domain to own it
                    c.set_perms(path, ["n0", f"b{domid}"])
            for key, value in sorted(xenstore_data.items()):
                if _REL_PATH.match(key):
                    c.write(f"{base}/{key}", value)
                    c.set_perms(f"{base}/{key}", ro)

    def release(self, domid: int) -> None:
        with self._lock:
            self.client.rm(self.base(domid))

    def exists(self, domid: int) -> bool:
        return self.client.exists(f"{self.base(domid)}/name")

    def wait(self, path: str, timeout: float) -> str | None:
        """The value at `path` once it exists (a watch, not polling), or None at the timeout."""
        token = f"sim-{threading.get_ident()}-{time.monotonic_ns()}"
        events = self.client.subscribe(token)
        self.client.watch(path, token)
        try:
            deadline = time.monotonic() + timeout
            while True:
                value = self.client.read_text(path)
                if value is not None:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    events.get(timeout=left)
                except Exception:  # queue.Empty: the deadline passed
                    pass
        finally:
            try:
                self.client.unwatch(path, token)
            finally:
                self.client.unsubscribe(token)


class Plugins:
    """host.call_plugin and the plugins it serves."""

    def __init__(self, core: Core) -> None:
        self.core = core
        core.api.register("host.call_plugin", self.call_plugin, 4, asyncable=True, locked=False)

    def call_plugin(self, host: Any, plugin: Any, fn: Any, args: Any) -> str:
        with self.core.db.lock:
            self.core.db.get("host", host)
        if plugin not in ("xenstore", "xenstore.py"):
            raise XapiError("XENAPI_MISSING_PLUGIN", str(plugin))
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            raise XapiError("FIELD_TYPE_ERROR", "args")
        store = self.core.domains
        if store is None:
            raise _plugin_error(str(fn), "Failure", "no Xen store configured on this host")
        try:
            return self._xenstore(store, str(fn), args)
        except XenstoreError as err:
            raise _plugin_error(str(fn), "XenstoreError", err.name) from None
        except (KeyError, ValueError) as err:
            raise _plugin_error(str(fn), type(err).__name__, str(err)) from None

    def _xenstore(self, store: DomainStore, fn: str, args: dict[str, str]) -> str:
        domid = int(args["dom_id"])
        rel = args["path"].strip("/")
        if not _REL_PATH.match(rel):
            raise ValueError(f"bad path {args['path']!r}")
        path = f"{store.base(domid)}/{rel}"
        if not store.exists(domid):
            raise _plugin_error(fn, "Failure", f"dom_id {domid} no longer present")
        c = store.client
        if fn in ("read_record", "read"):
            value = c.read_text(path)
            if value is None:
                if args.get("ignore_missing_path", "False").lower() == "true":
                    return "None"
                raise _plugin_error(fn, "XenstoreError", f"ENOENT {rel}")
            return value
        if fn in ("write_record", "write"):
            c.write(path, args["value"])
            return args["value"]
        if fn in ("list_records", "ls"):
            return json.dumps(self._tree(c, path))
        if fn in ("delete_record", "rm"):
            c.rm(path)
            return ""
        if fn in ("wait_record", "watch"):
            value = store.wait(path, float(args.get("timeout", "30")))
            if value is None:
                raise _plugin_error(fn, "Failure", f"TIMEOUT: {rel} did not appear")
            return value
        raise _plugin_error(fn, "Failure", f"unknown function {fn}")

    def _tree(self, c: XenstoreClient, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not c.exists(path):
            return out
        for name in c.directory(path):
            child = f"{path}/{name}"
            if c.directory(child):
                out[name] = self._tree(c, child)
            else:
                out[name] = c.read_text(child) or ""
        return out


def _plugin_error(fn: str, kind: str, message: str) -> XapiError:
    return XapiError("XENAPI_PLUGIN_EXCEPTION", fn, kind, message)
