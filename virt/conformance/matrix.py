"""The support matrix: driver x operation -> supported / not observed / not exercised /
unsupported / failed / untested.

Built from the suite's results, merged into `BASE.json` (one column per driver run, other
columns kept) and re-rendered as `BASE.md` from the whole JSON; its table is also the block
between README_BEGIN and README_END in the README (`update_readme`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virt.driver import OPERATIONS
from virt.errors import ConfigError

FORMAT = 1
SUPPORTED, UNSUPPORTED, FAILED, UNTESTED = "supported", "unsupported", "failed", "untested"
#: Declared and its tests passed, but the observer could not see (all of) its effects.
NOT_OBSERVED = "not observed"
#: Declared, and a test that would have exercised it was skipped.
NOT_EXERCISED = "not exercised"

# kind of a test: "exercise" proves an operation works; "unsupported" proves an undeclared
# operation raises UnsupportedOperation.
EXERCISE, REFUSAL = "exercise", "unsupported"


@dataclass
class TestRecord:
    """The outcome of one suite test and the operations it speaks for."""

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    operations: tuple[str, ...]
    kind: str = EXERCISE
    outcome: str = "passed"  # passed | failed | skipped
    reason: str = ""
    phases: list[str] = field(default_factory=list)
    declared: bool = True  # the driver declares the capability the test needs (or none)
    # (operations, what) of each effect the observer could not see
    unobserved: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


def operation_status(records: Sequence[TestRecord], op: str = "") -> str:
    """Operation `op`'s status from every test that touched it.

    No test skipped for a declared capability and no effect the observer could not see
    stands behind a "supported".
    """
    if any(r.outcome == "failed" for r in records):
        return FAILED
    exercised = [r for r in records if r.kind == EXERCISE and r.declared]
    if any(r.outcome == "skipped" for r in exercised):
        return NOT_EXERCISED
    if any(r.outcome == "passed" and any(op in ops for ops, _ in r.unobserved)
           for r in exercised):
        return NOT_OBSERVED
    if any(r.outcome == "passed" for r in exercised):
        return SUPPORTED
    if any(r.outcome == "passed" and r.kind == REFUSAL for r in records):
        return UNSUPPORTED
    return UNTESTED


def build_column(
    *,
    entry_point: str,
    driver_class: str,
    capabilities: Iterable[str],
    records: Sequence[TestRecord],
) -> dict[str, Any]:
    """The matrix column of one suite run."""
    operations: dict[str, Any] = {}
    for op, capability in OPERATIONS.items():
        mine = [r for r in records if op in r.operations]
        operations[op] = {
            "status": operation_status(mine, op),
            "capability": capability.value if capability else None,
            "tests": [_test_entry(r) for r in mine],
        }
    summary = {k: sum(r.outcome == k for r in records) for k in ("passed", "failed", "skipped")}
    return {
        "entry_point": entry_point,
        "class": driver_class,
        "capabilities": sorted(capabilities),
        "generated_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "summary": summary,
        "operations": operations,
        "driver_checks": [_test_entry(r) for r in records if not r.operations],
    }


def _test_entry(record: TestRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {"test": record.nodeid.rsplit("::", 1)[-1], "kind": record.kind,
                             "outcome": record.outcome}
    if record.reason:
        entry["reason"] = record.reason
    if record.unobserved:
        entry["not_observed"] = sorted({what for _, what in record.unobserved})
    return entry


def matrix_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """BASE.json and BASE.md for `--virtkit-matrix PATH` (PATH may end in .json or .md)."""
    base = Path(path)
    if base.suffix in (".json", ".md"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".md")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Lock the directory: the JSON itself is replaced by rename, and a side lock file would
    # litter docs/.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_matrix(json_path: Path) -> dict[str, Any]:
    """The matrix in `json_path`, or an empty one."""
    if not json_path.exists():
        return {"format": FORMAT, "drivers": {}}
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"support matrix {json_path} is unreadable: {exc}",
                          hint="delete it to start a new matrix") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"support matrix {json_path} has an unknown format",
                          hint="delete it to start a new matrix")
    return data


def merge_column(path: str | os.PathLike[str], label: str, column: Mapping[str, Any]) -> Path:
    """Put `column` under `label` in the matrix at `path` and re-render the Markdown."""
    json_path, md_path = matrix_paths(path)
    with _locked(json_path):
        matrix = load_matrix(json_path)
        matrix["drivers"][label] = dict(column)
        matrix["drivers"] = dict(sorted(matrix["drivers"].items()))
        _write_atomic(json_path, json.dumps(matrix, indent=2, sort_keys=True) + "\n")
        _write_atomic(md_path, render_markdown(matrix))
    return json_path


#: The README's generated block: the matrix table goes between these lines.
README_BEGIN, README_END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"

_CELL = {SUPPORTED: "✅ supported", UNSUPPORTED: "➖ unsupported", FAILED: "❌ **failed**",
         UNTESTED: "❔ untested", NOT_OBSERVED: "👁 declared, effect not observed",
         NOT_EXERCISED: "⏭ declared, not exercised"}


def render_table(matrix: Mapping[str, Any]) -> list[str]:
    """The operation x driver table, as Markdown lines."""
    drivers: Mapping[str, Any] = matrix["drivers"]
    labels = list(drivers)
    lines = [
        "| operation | capability | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for op, capability in OPERATIONS.items():
        cells = [
            _CELL.get(drivers[label]["operations"].get(op, {}).get("status", UNTESTED), "?")
            for label in labels
        ]
        gate = f"`{capability.value}`" if capability else "mandatory"
        lines.append(f"| `{op}` | {gate} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(matrix: Mapping[str, Any]) -> str:
    """The whole matrix as Markdown: one table, then the reasons behind failed/untested."""
    drivers: Mapping[str, Any] = matrix["drivers"]
    labels = list(drivers)
    lines = [
        "<!-- Generated by the virtkit conformance suite (--virtkit-matrix); do not edit. -->",
        "# Support matrix",
        "",
        "Generated from conformance runs: ✅ the suite exercised the operation and an "
        "observer independent of the driver saw its effects; 👁 declared and exercised, but "
        "the run had no observer that could see (all of) its effects; ⏭ declared, but a "
        "test that would exercise it was skipped; ➖ the driver does not declare it and "
        "raises UnsupportedOperation; ❌ a test of it failed; ❔ no test ran (see notes).",
        "",
        *render_table(matrix),
    ]
    lines += ["", "## Runs", ""]
    for label in labels:
        column = drivers[label]
        s = column["summary"]
        lines.append(
            f"- **{label}** (`{column['class']}`, entry point `{column['entry_point']}`, "
            f"{column['generated_at']}): {s['passed']} passed, {s['failed']} failed, "
            f"{s['skipped']} skipped"
        )
        for op, entry in column["operations"].items():
            if entry["status"] not in (FAILED, UNTESTED, NOT_EXERCISED, NOT_OBSERVED):
                continue
            notes = sorted(_notes(entry))
            detail = "; ".join(notes) if notes else "no test ran"
            lines.append(f"  - `{op}` {entry['status']}: {_one_line(detail)}")
        for check in column.get("driver_checks", []):
            if check["outcome"] == "failed":
                lines.append(f"  - {check['test']} failed: "
                             f"{_one_line(check.get('reason', ''))}")
    return "\n".join(lines) + "\n"


def _notes(entry: Mapping[str, Any]) -> set[str]:
    """Why an operation is not "supported": its failed tests' reasons, the skipped tests'
    reasons, or the effects not observed."""
    status = entry["status"]
    if status == NOT_OBSERVED:
        return {what for t in entry["tests"] for what in t.get("not_observed", ())}
    wanted = "failed" if status == FAILED else "skipped"
    return {t.get("reason", "") for t in entry["tests"]
            if t["outcome"] == wanted and t.get("kind") != REFUSAL and t.get("reason")}


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def readme_with_matrix(text: str, matrix: Mapping[str, Any], *, where: str = "README") -> str:
    """`text` with the block between README_BEGIN and README_END replaced by the table."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"{where} has no {README_BEGIN} ... {README_END} block",
                          hint="put the two marker lines around the support-matrix table")
    block = "\n".join([README_BEGIN, *render_table(matrix), ""])
    return text[:start] + block + text[end:]


def update_readme(readme: Path, json_path: Path) -> bool:
    """Rewrite the README's matrix block from the matrix in `json_path`; True if it changed."""
    text = readme.read_text(encoding="utf-8")
    updated = readme_with_matrix(text, load_matrix(json_path), where=str(readme))
    if updated == text:
        return False
    _write_atomic(readme, updated)
    return True
