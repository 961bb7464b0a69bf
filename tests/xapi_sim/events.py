"""`event.from(classes, token, timeout)`: changes since a token, waiting up to `timeout`.

`classes` holds class names (any case), `*` for every class, or `class/ref` for one object.
An empty token answers every current object of those classes as an `add` event; otherwise
the changes after the token, or none once `timeout` seconds pass. The answer is
`{events, valid_ref_counts, token}`; a token that does not parse is
EVENT_FROM_TOKEN_PARSE_FAILURE [token].
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from . import schema
from .db import now_iso
from .errors import XapiError

if TYPE_CHECKING:
    from .core import Core


class Events:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.db = core.db
        core.api.register("event.from", self.event_from, 3, locked=False)
        core.api.register("event.inject", self.inject, 2)

    def event_from(self, classes: Any, token: Any, timeout: Any) -> dict[str, Any]:
        wanted = self._wanted(classes)
        if not isinstance(token, str) or (token and not token.strip().isdigit()):
            raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", str(token))
        try:
            wait = max(0.0, float(timeout))
        except (TypeError, ValueError):
            raise XapiError("FIELD_TYPE_ERROR", "timeout") from None
        with self.db.lock:
            if token == "":
                return self._snapshot(wanted)
            since = int(token)
            deadline = time.monotonic() + wait
            while True:
                events = [e for e in self.db.events
                          if int(e["id"]) > since and self._match(wanted, e)]
                left = deadline - time.monotonic()
                if events or left <= 0:
                    break
                self.db.changed.wait(left)
            return {"events": copy.deepcopy(events), "token": self.db.token(),
                    "valid_ref_counts": self._counts(wanted)}

    def _wanted(self, classes: Any) -> list[tuple[str, str | None]]:
        if not isinstance(classes, list):
            raise XapiError("FIELD_TYPE_ERROR", "classes")
        out: list[tuple[str, str | None]] = []
        for item in classes:
            name, _, ref = str(item).partition("/")
            if name == "*":
                out.append(("*", None))
                continue
            cls = schema.class_name(name)
            if cls is None:
                raise XapiError("CLASS_NOT_FOUND", name)
            out.append((cls.lower(), ref or None))
        return out

    @staticmethod
    def _match(wanted: list[tuple[str, str | None]], event: dict[str, Any]) -> bool:
        for cls, ref in wanted:
            if cls == "*" or (cls == event["class"] and ref in (None, event["ref"])):
                return True
        return False

    def _snapshot(self, wanted: list[tuple[str, str | None]]) -> dict[str, Any]:
        events = []
        for cls in schema.CLASSES:
            for ref, rec in self.db.find(cls):
                event = {"id": str(self.db.gen), "timestamp": now_iso().value, "class": cls.lower(),
                         "operation": "add", "ref": ref, "snapshot": copy.deepcopy(rec)}
                if self._match(wanted, event):
                    events.append(event)
        return {"events": events, "token": self.db.token(),
                "valid_ref_counts": self._counts(wanted)}

    def _counts(self, wanted: list[tuple[str, str | None]]) -> dict[str, str]:
        names = {c for c, _ in wanted}
        return {cls.lower(): str(len(self.db.tables[cls])) for cls in schema.CLASSES
                if "*" in names or cls.lower() in names}

    def inject(self, cls: Any, ref: Any) -> str:
        name = schema.class_name(str(cls))
        if name is None:
            raise XapiError("CLASS_NOT_FOUND", str(cls))
        self.db.get(name, ref)
        self.db.modified(name, ref)
        return self.db.token()
