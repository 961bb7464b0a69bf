"""Message dispatch: sessions, parameter counts, the generic per-class messages, Async tasks.

Every message is registered with the parameter counts it accepts (the session excluded);
XAPI answers another count with MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]
counting the session, an unknown name with MESSAGE_METHOD_UNKNOWN, a dead session with
SESSION_INVALID [ref].
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import schema
from .db import Db, now_iso
from .errors import XapiError
from .faults import DropConnection, Faults
from .filters import compile_filter

LOG = logging.getLogger(__name__)


@dataclass
class Message:
    handler: Callable[..., Any]
    arity: tuple[int, ...]
    session: bool = True
    asyncable: bool = False
    locked: bool = True  # run under the database lock (event.from and waits take it themselves)


class Api:
    """The messages of the simulated XAPI and the sessions that may call them."""

    def __init__(self, db: Db, faults: Faults, *, user: str, password: str) -> None:
        self.db = db
        self.faults = faults
        self._user = user
        self._password = password
        self.messages: dict[str, Message] = {}
        self.calls: list[str] = []  # method names in order (never their parameters)
        self.slave_of: str | None = None  # set: logins answer HOST_IS_SLAVE [master]
        self.host_ref = schema.NULL_REF
        for cls in schema.CLASSES:
            self._generic(cls)
        self.register("session.login_with_password", self._login, 2, 3, 4, session=False)
        self.register("session.logout", self._logout, 0)
        self.register("session.get_this_host", lambda s: self._session(s)["this_host"], 1)
        self.register("task.cancel", self._task_cancel, 1)

    # -- registry --------------------------------------------------------------------------

    def register(self, name: str, handler: Callable[..., Any], *arity: int,
                 session: bool = True, asyncable: bool = False, locked: bool = True) -> None:
        """Serve `name` with `handler(*params)`, taking any of the counts in `arity`."""
        self.messages[name] = Message(handler, arity, session, asyncable, locked)

    def _generic(self, cls: str) -> None:
        fields = schema.CLASSES[cls]
        reg = self.register
        reg(f"{cls}.get_record", lambda r: self.record(cls, r), 1)
        reg(f"{cls}.get_all", lambda: list(self.db.tables[cls]), 0)
        reg(f"{cls}.get_all_records",
            lambda: {r: copy.deepcopy(rec) for r, rec in self.db.find(cls)}, 0)
        reg(f"{cls}.get_all_records_where", lambda e: self._where(cls, e), 1)
        reg(f"{cls}.get_by_uuid", lambda u: self.db.by_uuid(cls, u), 1)
        if "name_label" in fields:
            reg(f"{cls}.get_by_name_label",
                lambda n: [r for r, rec in self.db.find(cls) if rec["name_label"] == n], 1)
        for f in fields.values():
            reg(f"{cls}.get_{f.name}", self._getter(cls, f.name), 1)
            if f.access != "rw":
                continue
            reg(f"{cls}.set_{f.name}", self._setter(cls, f), 2)
            if f.type == "M":
                reg(f"{cls}.add_to_{f.name}", self._map_add(cls, f.name), 3)
                reg(f"{cls}.remove_from_{f.name}", self._map_remove(cls, f.name), 2)
            if f.type == "L":
                reg(f"{cls}.add_{f.name}", self._set_add(cls, f.name), 2)
                reg(f"{cls}.remove_{f.name}", self._set_remove(cls, f.name), 2)

    def record(self, cls: str, ref: Any) -> dict[str, Any]:
        return copy.deepcopy(self.db.get(cls, ref))

    def _where(self, cls: str, expr: Any) -> dict[str, Any]:
        pred = compile_filter(expr, set(schema.CLASSES[cls]))
        return {r: copy.deepcopy(rec) for r, rec in self.db.find(cls, pred)}

    def _getter(self, cls: str, name: str) -> Callable[[Any], Any]:
        return lambda ref: copy.deepcopy(self.db.get(cls, ref)[name])

    def _setter(self, cls: str, f: schema.Field) -> Callable[[Any, Any], str]:
        def set_field(ref: Any, value: Any) -> str:
            rec = self.db.get(cls, ref)
            rec[f.name] = schema.normalize(cls, f, value)
            self.db.modified(cls, ref)
            return ""
        return set_field

    def _map_add(self, cls: str, name: str) -> Callable[[Any, Any, Any], str]:
        def add(ref: Any, key: Any, value: Any) -> str:
            rec = self.db.get(cls, ref)
            if not isinstance(key, str) or not isinstance(value, str):
                raise XapiError("FIELD_TYPE_ERROR", name)
            if key in rec[name]:
                raise XapiError("MAP_DUPLICATE_KEY", cls, name, ref, key)
            rec[name][key] = value
            self.db.modified(cls, ref)
            return ""
        return add

    def _map_remove(self, cls: str, name: str) -> Callable[[Any, Any], str]:
        def remove(ref: Any, key: Any) -> str:
            rec = self.db.get(cls, ref)
            if rec[name].pop(key, None) is not None:
                self.db.modified(cls, ref)
            return ""
        return remove

    def _set_add(self, cls: str, name: str) -> Callable[[Any, Any], str]:
        def add(ref: Any, value: Any) -> str:
            rec = self.db.get(cls, ref)
            if value not in rec[name]:
                rec[name].append(str(value))
                self.db.modified(cls, ref)
            return ""
        return add

    def _set_remove(self, cls: str, name: str) -> Callable[[Any, Any], str]:
        def remove(ref: Any, value: Any) -> str:
            rec = self.db.get(cls, ref)
            if value in rec[name]:
                rec[name].remove(value)
                self.db.modified(cls, ref)
            return ""
        return remove

    def build(self, cls: str, record: Any) -> dict[str, Any]:
        """The fields of a create record, checked and normalised (FIELD_TYPE_ERROR [field])."""
        if not isinstance(record, dict):
            raise XapiError("FIELD_TYPE_ERROR", "args")
        out: dict[str, Any] = {}
        for f in schema.CLASSES[cls].values():
            if f.access == "ro":
                continue
            if f.name in record:
                out[f.name] = schema.normalize(cls, f, record[f.name])
            elif f.required:
                raise XapiError("FIELD_TYPE_ERROR", f.name)
        return out

    # -- sessions --------------------------------------------------------------------------

    def _login(self, user: Any, password: Any, *_version: Any) -> str:
        if self.slave_of:
            raise XapiError("HOST_IS_SLAVE", self.slave_of)
        if user != self._user or password != self._password:
            raise XapiError("SESSION_AUTHENTICATION_FAILED", str(user), "Authentication failure")
        originator = str(_version[1]) if len(_version) > 1 else ""
        return self.db.add("session", {
            "this_host": self.host_ref, "this_user": str(user), "originator": originator,
            "last_active": now_iso(),
        })

    def _logout(self) -> str:
        session = self._current.ref
        self.db.delete("session", session)
        return ""

    def _session(self, ref: Any) -> dict[str, Any]:
        return self.db.get("session", ref)

    _current = threading.local()

    @property
    def session_ref(self) -> str:
        """The session of the call being served."""
        return str(getattr(self._current, "ref", schema.NULL_REF))

    # -- dispatch --------------------------------------------------------------------------

    def response(self, method: str, params: tuple[Any, ...]) -> dict[str, Any]:
        """The XML-RPC struct XAPI answers `method(*params)` with."""
        try:
            return {"Status": "Success", "Value": self.call(method, params)}
        except XapiError as err:
            return {"Status": "Failure", "ErrorDescription": err.details}

    def call(self, method: str, params: tuple[Any, ...]) -> Any:
        """Run one message; raises XapiError or DropConnection."""
        is_async = method.startswith("Async.")
        name = method[len("Async."):] if is_async else method
        msg = self.messages.get(name)
        if msg is None or (is_async and not msg.asyncable):
            raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
        args = params
        if msg.session:
            if not params or not self.db.exists("session", params[0]):
                raise XapiError("SESSION_INVALID", params[0] if params else "")
            self._current.ref = params[0]
            args = params[1:]
        if len(args) not in msg.arity:
            extra = 1 if msg.session else 0
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method,
                            max(msg.arity) + extra, len(params))
        self.calls.append(method)
        if self.faults.take(method, "drop") is not None:
            raise DropConnection(method)
        failure = self.faults.take(method, "fail")
        drop_after = self.faults.take(method, "drop-after")
        if is_async:  # an injected failure is the task's, as a backend failure would be
            task = self._spawn_task(method, msg, args, failure.details if failure else None)
            if drop_after is not None:
                raise DropConnection(method)
            return task
        if failure is not None:
            raise XapiError(*failure.details)
        slow = self.faults.take(method, "slow")
        if slow is not None:
            time.sleep(slow.seconds)
        result = self._run(msg, args)
        if drop_after is not None:
            raise DropConnection(method)
        return result

    def _run(self, msg: Message, args: tuple[Any, ...]) -> Any:
        if not msg.locked:
            return msg.handler(*args)
        with self.db.lock:
            return msg.handler(*args)

    # -- tasks -----------------------------------------------------------------------------

    def _spawn_task(self, method: str, msg: Message, args: tuple[Any, ...],
                    failure: list[str] | None) -> str:
        task = self.db.add("task", {
            "name_label": method, "created": now_iso(), "resident_on": self.host_ref,
            "status": "pending", "progress": 0.0,
        })
        slow = self.faults.take(method, "slow")
        session = self.session_ref
        thread = threading.Thread(target=self._task_body, name=f"task {method}",
                                  args=(task, msg, args, slow.seconds if slow else 0.0, session,
                                        failure),
                                  daemon=True)
        thread.start()
        return task

    def _task_body(self, task: str, msg: Message, args: tuple[Any, ...], delay: float,
                   session: str, failure: list[str] | None) -> None:  # fmt: skip
        self._current.ref = session
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._task_status(task) == "cancelling":
                self._finish(task, "cancelled", error=["TASK_CANCELLED", task])
                return
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        try:
            if failure is not None:
                raise XapiError(*failure)
            value = self._run(msg, args)
        except XapiError as err:
            self._finish(task, "failure", error=err.details)
        except Exception as exc:  # a simulator bug: still finish the task, as xapi would
            LOG.exception("task %s", task)
            self._finish(task, "failure", error=["INTERNAL_ERROR", str(exc)])
        else:
            self._finish(task, "success", result=encode_value(value))

    def _task_status(self, task: str) -> str | None:
        with self.db.lock:
            rec = self.db.tables["task"].get(task)
            return rec["status"] if rec else None

    def _finish(self, task: str, status: str, *, result: str = "",
                error: list[str] | None = None) -> None:  # fmt: skip
        with self.db.lock:
            if not self.db.exists("task", task):
                return
            self.db.update("task", task, status=status, progress=1.0, finished=now_iso(),
                           result=result, error_info=list(error or []))

    def _task_cancel(self, task: Any) -> str:
        rec = self.db.get("task", task)
        if rec["status"] != "pending":
            raise XapiError("OPERATION_NOT_ALLOWED", f"task {task} is {rec['status']}")
        self.db.update("task", task, status="cancelling")
        return ""


def encode_value(value: Any) -> str:
    """A task result as XAPI stores it: an XML-RPC `<value>` element."""
    if value == "":
        return ""
    body = xmlrpc.client.dumps((value,))
    start, end = body.index("<value>"), body.rindex("</value>") + len("</value>")
    return body[start:end]
