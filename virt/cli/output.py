"""How the CLI prints: rich tables for people, JSON for scripts, progress only on a tty."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from virt.masking import scrub

FORMATS = ("table", "json")
PIPE_WIDTH = 240


class Output:
    """One command's output channel, in the chosen format."""

    def __init__(self, fmt: str = "table") -> None:
        self.format = fmt
        self.console = Console(highlight=False)
        if not self.console.is_terminal:
            # Piped output: never truncate uuids or names to a guessed 80 columns.
            self.console = Console(highlight=False, width=PIPE_WIDTH)
        self.err_console = Console(stderr=True, highlight=False)

    @property
    def json(self) -> bool:
        return self.format == "json"

    def data(self, value: Any) -> None:
        """Print a JSON document (json mode only)."""
        sys.stdout.write(scrub(json.dumps(value, indent=2, sort_keys=False, default=str)) + "\n")

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str],
        *,
        json_value: Any = None,
        title: str | None = None,
    ) -> None:
        """Rows as a table, or `json_value` (default: the rows) as JSON."""
        if self.json:
            self.data(list(rows) if json_value is None else json_value)
            return
        table = Table(title=title, show_lines=False)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        self.console.print(table)

    def fields(self, pairs: Mapping[str, Any], *, json_value: Any = None) -> None:
        """One object as a two-column field/value table, or as JSON."""
        if self.json:
            self.data(dict(pairs) if json_value is None else json_value)
            return
        table = Table(show_header=True)
        table.add_column("field")
        table.add_column("value", overflow="fold")
        for key, value in pairs.items():
            table.add_row(key, _cell(value))
        self.console.print(table)

    def message(self, text: str, *, json_value: Any = None) -> None:
        """A line for people, or `json_value` as JSON."""
        if self.json:
            if json_value is not None:
                self.data(json_value)
            return
        self.console.print(scrub(text), markup=False)

    def warning(self, text: str) -> None:
        """One `virtkit: warning:` line on stderr, in either format (stdout stays data)."""
        print(f"virtkit: warning: {scrub(text)}", file=sys.stderr)

    def text(self, text: str) -> None:
        """Raw text (console logs, config samples), unstyled."""
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")

    @contextlib.contextmanager
    def progress(self, what: str) -> Iterator[None]:
        """A spinner on stderr while long work runs: on a terminal, never in json mode."""
        if self.json or not self.err_console.is_terminal:
            yield
            return
        with self.err_console.status(what):
            yield


def _cell(value: Any) -> Text:
    """A table cell as plain text (never read as rich markup, scrubbed of secrets)."""
    return Text(scrub(_cell_text(value)))


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value) or "-"
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    return str(value)
