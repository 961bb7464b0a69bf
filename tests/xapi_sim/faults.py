"""Injectable faults: what a real XAPI does on a bad day, on demand.

`fail` answers a call with a XAPI failure (e.g. `SR_BACKEND_FAILURE_46`), `drop` closes the
HTTP connection without a response (before the call runs, or after: the effect happens and the
answer is lost), `slow` delays a call (and the task of its `Async.` form). A rule names a
message (`VM.start`; `Async.VM.start` matches only the async form) and fires `times` times.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


class DropConnection(Exception):
    """The HTTP layer closes the connection without answering."""


@dataclass
class Rule:
    kind: str  # fail | drop | slow
    method: str
    times: int
    details: list[str] = field(default_factory=list)
    after: bool = False
    seconds: float = 0.0


class Faults:
    """The armed rules; thread-safe."""

    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def fail(self, method: str, code: str, *params: str, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with [code, *params]."""
        self._add(Rule("fail", method, times, [code, *params]))

    def drop(self, method: str, *, after: bool = False, times: int = 1) -> None:
        """Close the connection on the next `times` calls (after running them if `after`)."""
        self._add(Rule("drop-after" if after else "drop", method, times, after=after))

    def slow(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Delay the next `times` calls of `method` by `seconds`."""
        self._add(Rule("slow", method, times, seconds=seconds))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, rule: Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def take(self, method: str, kind: str) -> Rule | None:
        """The first armed rule of `kind` for `method`, consumed once."""
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and _matches(rule.method, method):
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                    return rule
        return None


def _matches(pattern: str, method: str) -> bool:
    if pattern == method:
        return True
    return not pattern.startswith("Async.") and method == f"Async.{pattern}"
