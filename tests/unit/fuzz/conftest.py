"""The fuzz runs' tally: inputs tried and failures per kind, printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


class Tally:
    """Counts the generated inputs of each kind and the ones that broke a rule."""

    def __init__(self) -> None:
        self.tried: dict[str, int] = {}
        self.failed: dict[str, int] = {}

    @contextmanager
    def check(self, kind: str) -> Iterator[None]:
        """One input of `kind`: counted as tried, and as a failure if the block raises."""
        self.tried[kind] = self.tried.get(kind, 0) + 1
        self.failed.setdefault(kind, 0)
        try:
            yield
        except BaseException:
            self.failed[kind] += 1
            raise

    def lines(self) -> list[str]:
        return [f"fuzz: {kind} {n} inputs, {self.failed[kind]} failures"
                for kind, n in sorted(self.tried.items())]


TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = TALLY.lines()
    if lines:
        terminalreporter.section("fuzz: generated bad input")
        for line in lines:
            terminalreporter.write_line(line)
