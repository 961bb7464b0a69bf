"""Fixtures that check a test's effects on the engine through the run's observer.

`effects.expect(what, probe)` asserts that the observer sees the effect (polling up to a
timeout); when the observer cannot see that kind of thing on its engine, the effect is noted
as not observed for the test's operations, and the matrix says so instead of "supported".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from virt.conformance.observers import NotObserved, Observer, load_observer
from virt.conformance.settings import SuiteSettings

T = TypeVar("T")

#: Per test item: (operations, what) of each effect the observer could not see.
UNOBSERVED = pytest.StashKey[list[tuple[tuple[str, ...], str]]]()


def unobserved(item: pytest.Item) -> list[tuple[tuple[str, ...], str]]:
    """(operations, what) of each effect of the test `item` that was not observed."""
    notes = item.stash.get(UNOBSERVED, None)
    return list(notes) if notes else []


class Effects:
    """The effect checks of one test."""

    def __init__(self, observer: Observer, item: pytest.Item) -> None:
        self.observer = observer
        marker = item.get_closest_marker("virtkit_operations")
        self._operations: tuple[str, ...] = tuple(marker.args) if marker else ()
        self._notes = item.stash.setdefault(UNOBSERVED, [])

    def _not_so(self, what: str) -> AssertionError:
        return AssertionError(f"{what}: not so on the engine (seen by the "
                              f"{self.observer.name!r} observer, not through the driver)")

    def see(self, what: str, probe: Callable[[Observer], T],
            ops: Sequence[str] = ()) -> T | None:
        """The probe's value, or None (noted as not observed for `ops`) if it cannot see."""
        try:
            return probe(self.observer)
        except NotObserved as exc:
            self._notes.append((tuple(ops) or self._operations, f"{what} ({exc})"))
            return None

    def expect(self, what: str, probe: Callable[[Observer], bool], *,
               ops: Sequence[str] = (), timeout: float = 0.0) -> None:
        """Assert the observer sees `what` (within `timeout` seconds); note it if it cannot."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.see(what, probe, ops)
            if seen is None or seen:
                return
            if time.monotonic() >= deadline:
                raise self._not_so(what)
            time.sleep(0.1)

    def stays(self, what: str, probe: Callable[[Observer], bool], *, seconds: float,
              ops: Sequence[str] = ()) -> None:
        """Assert `what` holds on the engine for `seconds` (what a late effect would undo:
        a guest that restarts shows its new boot only after a while)."""
        deadline = time.monotonic() + seconds
        while True:
            seen = self.see(what, probe, ops)
            if seen is None:
                return
            if not seen:
                raise self._not_so(what)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)


@pytest.fixture(scope="session")
def observer(suite: SuiteSettings, pytestconfig: pytest.Config) -> Observer:
    """The run's observer of the engine (the null one if none is registered)."""
    run = pytestconfig.pluginmanager.get_plugin("virtkit-conformance-run")
    return load_observer(suite, run.entry_point())  # type: ignore[union-attr]


@pytest.fixture
def effects(observer: Observer, request: pytest.FixtureRequest) -> Effects:
    """This test's effect checks."""
    return Effects(observer, request.node)
