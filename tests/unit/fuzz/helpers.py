"""What the fuzz tests share: bounded settings, in-process CLI runs, store dumps."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

from virt.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNSUPPORTED, EXIT_USAGE

#: $VIRTKIT_FUZZ_SCALE multiplies every run's example count (a soak run: 10; default 1).
SCALE = float(os.environ.get("VIRTKIT_FUZZ_SCALE") or 1)

#: Every exit code a failing command may end with (virt.errors EXIT_*).
FAILURE_CODES = frozenset({EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNSUPPORTED})


def bounded(examples: int, *, deadline_s: float = 5.0, shrink: bool = True) -> settings:
    """Hypothesis settings for a run bounded in count and time, writing no example database
    (without shrinking, a failure is reported as found: for the slow, process-per-input runs)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=timedelta(seconds=deadline_s),
                    database=None, derandomize=False, phases=phases,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str], stdin: str = "") -> Ran:
    """Run a console script's main(argv) in this process, capturing what it prints."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            _stdin(io.StringIO(stdin)):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # a main() must return, but say what it did if not
            code = exc.code if isinstance(exc.code, int) else -1
            err.write(f"\n(main raised SystemExit({exc.code!r}))")
    return Ran(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _stdin(replacement: io.StringIO) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, replacement
    try:
        yield
    finally:
        sys.stdin = saved


#: Tables every start of the service writes (this host's heartbeat), whatever the command.
HEARTBEAT_TABLES = ("hosts",)


def dump(database: Path, ignore: dict[str, set[str]] | None = None) -> list[str]:
    """Every row of a SQLite database as text, table by table (empty if there is no file
    yet), but the heartbeat rows every run refreshes and the `ignore`d columns per table."""
    if not database.exists():
        return []
    conn = sqlite3.connect(database)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        lines = []
        for table in tables:
            if table in HEARTBEAT_TABLES:
                continue
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            skip = (ignore or {}).get(table, set())
            for row in cursor:
                kept = {n: v for n, v in zip(names, row, strict=True) if n not in skip}
                lines.append(f"{table} {kept!r}")
        return sorted(lines)
    finally:
        conn.close()


def assert_clean_failure(ran: Ran, prog: str, codes: frozenset[int] = FAILURE_CODES) -> None:
    """A failure as the CLI documents it: a code it names, one error line, no traceback,
    never the catch-all 'unexpected ...' (an error nobody typed)."""
    assert ran.code in codes, (ran.code, ran.err)
    assert "Traceback" not in ran.err and "Traceback" not in ran.out, ran.err
    assert f"{prog}: error: " in ran.err, ran.err
    message = ran.err.split(f"{prog}: error: ", 1)[1].strip()
    assert message, ran.err
    assert not message.startswith("unexpected "), ran.err


def assert_nothing_half_written(before: list[str], after: list[str]) -> None:
    """The store as it was, but for events that record a refused or failed operation."""
    removed = [line for line in before if line not in after]
    added = [line for line in after if line not in before]
    assert not removed, removed
    for line in added:
        assert line.startswith("instance_events ") and "_failed'" in line, added
