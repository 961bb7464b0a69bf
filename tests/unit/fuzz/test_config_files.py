"""Config files, generated: random text and known options with wrong values, read by
`virtkit` and `virtkit-recover`. Each one that is wrong exits 2 naming the option or file,
without a traceback, and leaves the store as it was."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.unit.fuzz.helpers import assert_clean_failure, bounded, dump, run_main
from virt.cli import main as virtkit
from virt.cli import recover
from virt.errors import EXIT_USAGE

USAGE = frozenset({EXIT_USAGE})
#: One line with something in it (blank is not wrong: oslo.config reads it as unset).
not_int = st.text(min_size=1, max_size=10).filter(
    lambda s: s.strip() != "" and s.splitlines() == [s] and not s.strip().lstrip("+-").isdigit())
unknown = st.from_regex(r"\Azz[a-z0-9]{1,10}\Z")

#: (section, option, wrong values, what the error names, read by virtkit too)
WRONG = [
    ("DEFAULT", "compute_driver", unknown, "compute driver", True),
    ("DEFAULT", "state_connection", unknown.map(lambda s: f"{s}://x/y"), "state_connection",
     True),
    ("DEFAULT", "db_auto_upgrade", unknown, "db_auto_upgrade", True),
    ("fake", "spawn_latency_ms", not_int | st.integers(max_value=-1).map(str),
     "spawn_latency_ms", False),
    ("recovery", "parallel", not_int | st.sampled_from(["0", "65", "-3", "1e3"]), "parallel",
     False),
    ("recovery", "volume_check", unknown, "volume_check", False),
    ("recovery", "volume_timeout", not_int | st.sampled_from(["0", "0.5", "-1"]),
     "volume_timeout", False),
    ("recovery", "fence_check_timeout", not_int | st.sampled_from(["0", "-1"]),
     "fence_check_timeout", False),
    ("recovery", "claim_lease_seconds", not_int | st.sampled_from(["-1"]),
     "claim_lease_seconds", False),
    ("recovery", "require_instance_disk", unknown, "require_instance_disk", False),
]


class Configs:
    """Config files in a temporary directory, all on one store that already exists."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.database = self.state / "virtkit.sqlite"
        self.counter = itertools.count()
        good = self.write("[DEFAULT]\n")
        booted = run_main(virtkit.main, ["boot", "web", "--image", "cirros", "--flavor",
                                         "m1.tiny", "--config", str(good)])
        assert booted.code == 0, booted.err

    def write(self, text: str) -> Path:
        path = self.tmp / f"fuzz-{next(self.counter)}.conf"
        head = f"[DEFAULT]\nstate_path = {self.state}\nhost = fuzz-host\n"
        path.write_text(head + text, encoding="utf-8", errors="surrogateescape")
        return path

    def both(self, path: Path):
        """What virtkit and virtkit-recover (a dry run) make of one config file."""
        yield "virtkit", run_main(virtkit.main, ["list", "--config", str(path)])
        yield "virtkit-recover", run_main(recover.main, [
            "--config", str(path), "--failed-host", "old-host", "--confirm-fenced",
            "--dry-run"])


@pytest.fixture
def configs(tmp_path):
    return Configs(tmp_path)


def _option(entry):
    section, name, values, names, by_virtkit = entry
    return values.map(lambda v: (section, name, v, names, by_virtkit))


@bounded(80)
@given(case=st.sampled_from(WRONG).flatmap(_option))
def test_known_options_with_wrong_values(configs, tally, case):
    section, name, value, names, by_virtkit = case
    text = f"[{section}]\n{name} = {value}\n".replace("[DEFAULT]\n", "")
    path = configs.write(text)
    with tally.check("config"):
        before = dump(configs.database)
        for prog, ran in configs.both(path):
            if prog == "virtkit" and not by_virtkit:
                continue  # an option of virtkit-recover's only
            assert_clean_failure(ran, prog, USAGE)
            assert names in ran.err, (prog, value, ran.err)
        assert dump(configs.database) == before


line = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["[DEFAULT]", "[recovery]", "[fake]", "[", "]", "[]", "=", " = x",
                     "state_path", "compute_driver =", "host = ", "flavors = x",
                     "flavors = a:b:c:d", "parallel = many", "\tindented = 1"]),
    st.tuples(st.sampled_from(["DEFAULT", "recovery", "fake", "libvirt", "zz"]),
              st.text(max_size=10), st.text(max_size=20))
    .map(lambda t: f"[{t[0]}]\n{t[1]} = {t[2]}"),
)


#: Options that name places: a random value there would write outside the test's directory.
PLACES = ("state_path", "instances_path", "state_connection", "secret_key_file", "_file",
          "_dir", "images_path")


@bounded(80)
@given(lines=st.lists(line, max_size=6))
def test_random_config_files(configs, tally, lines):
    text = "\n".join(lines).replace("\x00", "")
    assume(not any(place in text for place in PLACES))
    path = configs.write(text)
    with tally.check("config"):
        before = dump(configs.database)
        for prog, ran in configs.both(path):
            if ran.code != 0:
                assert_clean_failure(ran, prog, USAGE | {1})
        assert dump(configs.database) == before
