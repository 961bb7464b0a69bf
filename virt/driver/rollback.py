"""The spawn rollback stack: the one owner of a failed spawn's clean-up.

A driver's spawn pushes an undo for each thing it creates, right after creating it. If the
spawn fails (any exception, including KeyboardInterrupt), the undos run in reverse order and
the original error propagates; an undo that fails is logged with what it left behind and
the others still run. Nobody else (the compute service, recovery) cleans up after a spawn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

LOG = logging.getLogger(__name__)


class SpawnRollback:
    """Context manager holding the undos of one spawn, for `what` (e.g. 'web1 (uuid)')."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        #: What the last rollback could not remove, as "description: error" lines.
        self.left_behind: list[str] = []

    def push(self, description: str, undo: Callable[[], Any]) -> None:
        """Register `undo` for something just created; `description` names it in logs."""
        self._undo.append((description, undo))

    def discard(self) -> None:
        """Forget every undo: what was created is kept (the spawn succeeded)."""
        self._undo.clear()

    def __enter__(self) -> SpawnRollback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.discard()
            return
        self.roll_back()
        if self.left_behind and exc is not None:
            exc.add_note("rollback left behind: " + "; ".join(self.left_behind))

    def roll_back(self) -> None:
        """Run the undos, newest first; failures are logged and collected in left_behind."""
        while self._undo:
            description, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing the rest; the spawn's own error wins
                text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                self.left_behind.append(f"{description}: {text}")
                LOG.error("rollback of the spawn of %s could not remove %s: %s; remove it by "
                          "hand", self.what, description, text)
