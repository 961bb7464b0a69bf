"""The support-matrix model: statuses, paths, merging, rendering."""

from __future__ import annotations

import json

import pytest

from virt.conformance.matrix import (
    EXERCISE,
    REFUSAL,
    TestRecord,
    build_column,
    matrix_paths,
    merge_column,
    operation_status,
)
from virt.errors import ConfigError


def rec(outcome: str, kind: str = EXERCISE, ops=("pause",), *, declared: bool = True,
        unobserved=()) -> TestRecord:
    return TestRecord("suite.py::t", tuple(ops), kind, outcome, declared=declared,
                      unobserved=list(unobserved))


@pytest.mark.parametrize(
    "records, status",
    [
        ([], "untested"),
        ([rec("skipped", declared=False)], "untested"),
        # no "supported" that a skipped test of a declared capability stands behind
        ([rec("skipped")], "not exercised"),
        ([rec("passed"), rec("skipped")], "not exercised"),
        ([rec("passed")], "supported"),
        # passed, but the observer could not see the effect on this operation
        ([rec("passed", unobserved=[(("pause",), "the clock")])], "not observed"),
        ([rec("passed", unobserved=[(("unpause",), "the clock")])], "supported"),
        ([rec("passed", unobserved=[(("pause",), "the clock")]), rec("failed")], "failed"),
        ([rec("passed", REFUSAL)], "unsupported"),
        ([rec("passed"), rec("failed")], "failed"),
        ([rec("passed", "check")], "untested"),
        ([rec("failed", "check"), rec("passed")], "failed"),
    ],
)
def test_operation_status(records, status):
    assert operation_status(records, "pause") == status


@pytest.mark.parametrize("given", ["out/m", "out/m.json", "out/m.md"])
def test_matrix_paths(tmp_path, given):
    assert matrix_paths(tmp_path / given) == (tmp_path / "out/m.json", tmp_path / "out/m.md")


def column(outcome: str) -> dict:
    return build_column(entry_point="x", driver_class="pkg.X", capabilities=["pause"],
                        records=[rec(outcome), rec("failed", "check", ops=())])


def test_merge_keeps_other_columns_and_replaces_own(tmp_path):
    base = tmp_path / "matrix"
    merge_column(base, "b", column("passed"))
    merge_column(base, "a", column("failed"))
    merge_column(base, "b", column("failed"))
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert list(data["drivers"]) == ["a", "b"]
    assert data["drivers"]["b"]["operations"]["pause"]["status"] == "failed"
    markdown = (tmp_path / "matrix.md").read_text()
    assert "| operation | capability | a | b |" in markdown
    assert "do not edit" in markdown.splitlines()[0]
    assert "t failed" in markdown  # the failed driver-level check is listed


def test_corrupt_matrix_is_a_clear_error(tmp_path):
    (tmp_path / "m.json").write_text("{oops")
    with pytest.raises(ConfigError, match="delete it"):
        merge_column(tmp_path / "m", "a", column("passed"))


def test_concurrent_merges_lose_no_column_and_leave_no_litter(tmp_path):
    import threading

    threads = [threading.Thread(target=merge_column, args=(tmp_path / "m", f"d{i}",
                                                           column("passed")))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    data = json.loads((tmp_path / "m.json").read_text())
    assert len(data["drivers"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.md"]
