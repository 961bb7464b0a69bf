"""The simulator's database: one table per class, `OpaqueRef:` refs, and the event log."""

from __future__ import annotations

import copy
import threading
import time
import uuid
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from . import schema
from .errors import XapiError, handle_invalid

EVENT_LOG_MAX = 20000


def now_iso() -> xmlrpc.client.DateTime:
    """XAPI's dateTime as sent in records (UTC, basic ISO 8601)."""
    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime()))


class Db:
    """Tables `{class: {ref: record}}`; every change is an event with a generation number."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in schema.CLASSES}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.gen = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_LOG_MAX)

    # -- records ---------------------------------------------------------------------------

    def add(self, cls: str, fields: dict[str, Any] | None = None, ref: str | None = None) -> str:
        """Insert a record of `cls` (defaults filled, a fresh uuid unless given); its ref."""
        rec = schema.defaults(cls)
        rec["uuid"] = str(uuid.uuid4())
        rec.update(fields or {})
        ref = ref or f"OpaqueRef:{uuid.uuid4()}"
        with self.lock:
            self.tables[cls][ref] = rec
            self._event(cls, ref, "add", rec)
        return ref

    def get(self, cls: str, ref: Any) -> dict[str, Any]:
        """The live record (HANDLE_INVALID [cls, ref] if there is none)."""
        rec = self.tables[cls].get(ref) if isinstance(ref, str) else None
        if rec is None:
            raise handle_invalid(cls, str(ref))
        return rec

    def exists(self, cls: str, ref: Any) -> bool:
        return isinstance(ref, str) and ref in self.tables[cls]

    def modified(self, cls: str, ref: str) -> None:
        """Record a change to `ref` (callers mutate the live record, then call this)."""
        with self.lock:
            self._event(cls, ref, "mod", self.tables[cls][ref])

    def update(self, cls: str, ref: str, **fields: Any) -> None:
        with self.lock:
            self.get(cls, ref).update(fields)
            self.modified(cls, ref)

    def delete(self, cls: str, ref: str) -> dict[str, Any]:
        with self.lock:
            rec = self.tables[cls].pop(ref)
            self._event(cls, ref, "del", rec)
        return rec

    def find(self, cls: str, pred: Callable[[dict[str, Any]], bool] | None = None,
             ) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        for ref, rec in list(self.tables[cls].items()):
            if pred is None or pred(rec):
                yield ref, rec

    def by_uuid(self, cls: str, value: str) -> str:
        for ref, rec in self.tables[cls].items():
            if rec["uuid"] == value:
                return ref
        raise XapiError("UUID_INVALID", cls, value)

    # -- back-references -------------------------------------------------------------------

    def link(self, cls: str, ref: str, field: str, target: str) -> None:
        if self.exists(cls, ref):
            items = self.tables[cls][ref][field]
            if target not in items:
                items.append(target)
                self.modified(cls, ref)

    def unlink(self, cls: str, ref: str, field: str, target: str) -> None:
        if self.exists(cls, ref):
            items = self.tables[cls][ref][field]
            if target in items:
                items.remove(target)
                self.modified(cls, ref)

    # -- events ----------------------------------------------------------------------------

    def _event(self, cls: str, ref: str, op: str, rec: dict[str, Any]) -> None:
        self.gen += 1
        self.events.append({
            "id": str(self.gen), "timestamp": now_iso().value, "class": cls.lower(),
            "operation": op, "ref": ref, "snapshot": copy.deepcopy(rec),
        })
        self.changed.notify_all()

    def token(self) -> str:
        return f"{self.gen:020d}"
