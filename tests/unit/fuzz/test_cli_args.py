"""`virtkit` command lines, generated: random tokens and well-formed commands with wrong values.

Each failing one exits with its documented code, one error line naming what was wrong, no
traceback, and leaves the store as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.unit.fuzz.helpers import FAILURE_CODES, assert_clean_failure, bounded, dump, run_main
from virt.cli.main import main
from virt.errors import EXIT_NOT_FOUND, EXIT_USAGE
from virt.model import FLAVOR_LIMITS

COMMANDS = ["drivers", "host", "boot", "list", "show", "delete", "start", "stop", "reboot",
            "pause", "unpause", "suspend", "resume", "snapshot", "console", "reset-state",
            "volume", "attach", "detach", "config", "sample", "db", "version"]
OPTIONS = ["--image", "--flavor", "--vcpus", "--memory-mb", "--disk-gb", "--disk-format",
           "--kernel", "--ramdisk", "--volume", "--stopped", "--timeout", "--hard", "--lines",
           "--events", "--state", "--format", "json", "table", "--all-hosts", "--config",
           "web", "cirros", "m1.tiny", "-1", "0", "1", "1e999", "nan", "/dev/vdb", ":", "--"]
#: Commands a random line must not reach: demo runs a whole lifecycle, --debug prints
#: tracebacks on purpose.
AVOID = {"demo", "--debug"}


class Bed:
    """A config on the fake driver, a store in a temporary directory, one instance 'web'."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "virtkit.conf"
        self.config.write_text(f"[DEFAULT]\nstate_path = {tmp / 'state'}\nhost = fuzz-host\n")
        self.database = tmp / "state" / "virtkit.sqlite"
        booted = self.run("boot", "web", "--image", "cirros", "--flavor", "m1.tiny")
        assert booted.code == 0, booted.err

    def run(self, *argv: str):
        return run_main(main, [*argv, "--config", str(self.config)])


@pytest.fixture
def bed(tmp_path):
    return Bed(tmp_path)


def _fails_cleanly(bed: Bed, argv: list[str], codes=FAILURE_CODES, names: str = "") -> None:
    before = dump(bed.database)
    ran = bed.run(*argv)
    assert_clean_failure(ran, "virtkit", codes)
    if names:
        assert names.lower() in ran.err.lower(), (argv, ran.err)
    assert dump(bed.database) == before, argv  # nothing half-written


token = st.one_of(st.sampled_from(COMMANDS + OPTIONS), st.text(max_size=12))


@bounded(120)
@given(argv=st.lists(token, max_size=7))
def test_random_command_lines(bed, tally, argv):
    assume(not AVOID & set(argv) and "\x00" not in "".join(argv))
    with tally.check("cli"):
        before = dump(bed.database)
        ran = bed.run(*argv)
        if ran.code == 0:
            return  # a line that happens to be a valid command
        assert_clean_failure(ran, "virtkit")
        assert dump(bed.database) == before, argv


def _wrong_numbers():
    """(argv, code, what the message names) for boot with sizes it must refuse."""
    base = ["boot", "new", "--image", "cirros"]
    low = st.tuples(st.sampled_from(["vcpus", "memory-mb"]), st.integers(max_value=0))
    high = st.sampled_from(sorted(FLAVOR_LIMITS)).flatmap(
        lambda attr: st.tuples(st.just(attr), st.integers(min_value=FLAVOR_LIMITS[attr] + 1,
                                                          max_value=10**30)))

    def sized(pair):
        attr, value = pair
        sizes = {"vcpus": "1", "memory-mb": "64"}
        option = attr.replace("_", "-")
        if option not in ("vcpus", "memory-mb", "disk-gb"):
            option = "disk-gb" if attr == "root_gb" else None
        if option is None:
            return None
        sizes[option] = str(value)
        argv = base + [a for k, v in sizes.items() for a in (f"--{k}", v)]
        return argv, {EXIT_USAGE}, option.split("-")[0]

    not_int = st.text(min_size=1, max_size=8).filter(lambda s: not _is_int(s)).map(
        lambda s: (base + ["--vcpus", s, "--memory-mb", "64"], {EXIT_USAGE}, "vcpus"))
    return st.one_of(low.map(sized), high.map(sized).filter(bool), not_int)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _wrong_values():
    """(argv, codes, what the message names) for commands with one wrong value each."""
    bad_name = st.text(min_size=0, max_size=70).filter(
        lambda s: not s or len(s) > 63 or not s[0].isascii() or not s[0].isalnum()
        or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in s))
    size = ["--vcpus", "1", "--memory-mb", "64"]
    negative = st.floats(max_value=-1e-6, allow_nan=False) | st.sampled_from(
        [float("nan"), float("inf"), float("-inf")])
    unknown = st.from_regex(r"\Azz[a-z0-9]{1,10}\Z")
    return st.one_of(
        bad_name.filter(lambda s: not s.startswith("-")).map(
            lambda s: (["boot", s, "--image", "cirros", *size], {EXIT_USAGE}, "name")),
        unknown.map(lambda s: (["boot", "new", "--image", "cirros", "--flavor", s],
                               {EXIT_USAGE}, "flavor")),
        unknown.map(lambda s: (["boot", "new", "--image", "cirros", "--disk-format", s, *size],
                               {EXIT_USAGE}, "disk_format")),
        negative.map(lambda f: (["stop", "web", "--timeout", repr(f)], {EXIT_USAGE}, "timeout")),
        st.integers(max_value=-1).map(lambda n: (["console", "web", "--lines", str(n)],
                                                  {EXIT_USAGE}, "lines")),
        st.integers(max_value=-1).map(lambda n: (["show", "web", "--events", str(n)],
                                                  {EXIT_USAGE}, "events")),
        unknown.map(lambda s: (["reset-state", "web", "--state", s], {EXIT_USAGE}, "vm_state")),
        st.tuples(st.sampled_from(["show", "delete", "start", "stop", "reboot", "pause",
                                   "unpause", "suspend", "resume", "console", "reset-state"]),
                  unknown).map(lambda t: ([t[0], t[1]], {EXIT_NOT_FOUND}, "not found")),
        unknown.map(lambda s: (["--format", s, "list"], {EXIT_USAGE}, "format")),
        unknown.map(lambda s: ([s], {EXIT_USAGE}, "invalid choice")),
        unknown.map(lambda s: (["boot", "new", "--image", "cirros", *size, "--volume", s],
                               {EXIT_USAGE}, "--volume")),
        unknown.map(lambda s: (["volume", "attach", "web", f"/nonexistent/{s}.json", "/dev/vdb"],
                               {EXIT_USAGE}, "connection_info")),
        unknown.map(lambda s: (["volume", "detach", "web", s], {EXIT_NOT_FOUND}, "no volume")),
    )


@bounded(150)
@given(case=st.one_of(_wrong_numbers(), _wrong_values()))
def test_commands_with_wrong_values(bed, tally, case):
    argv, codes, names = case
    with tally.check("cli"):
        _fails_cleanly(bed, argv, frozenset(codes), names)
