"""A few generated bad inputs through the real console scripts, as separate processes: the
exit code the process ends with and stderr without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.fuzz.helpers import bounded, dump
from tests.unit.fuzz.test_recover import FAILED, HERE, NovaBed
from virt.errors import EXIT_FAILED, EXIT_USAGE

BIN = Path(sys.executable).parent


def _script(name: str) -> list[str]:
    path = BIN / name
    module = {"virtkit": "virt.cli.main", "virtkit-recover": "virt.cli.recover"}[name]
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def _run(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTKIT_CONFIG"}
    return subprocess.run([*_script(name), *argv], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def _clean(done: subprocess.CompletedProcess[str], prog: str, code: int) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert f"{prog}: error: " in done.stderr, done.stderr  # after argparse's usage, if any


unknown = st.from_regex(r"\Azz[a-z0-9]{1,8}\Z")


@bounded(3, deadline_s=30, shrink=False)
@given(word=unknown)
def test_virtkit_process_usage_and_config_errors(tmp_path_factory, tally, word):
    tmp = tmp_path_factory.mktemp("proc")
    config = tmp / "virtkit.conf"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp / 'state'}\ncompute_driver = {word}\n")
    with tally.check("processes"):
        _clean(_run("virtkit", word), "virtkit", EXIT_USAGE)
        done = _run("virtkit", "list", "--config", str(config))
        _clean(done, "virtkit", EXIT_USAGE)
        assert word in done.stderr and "compute driver" in done.stderr
        (tmp / "vol.json").write_text(json.dumps({"driver_volume_type": "iscsi",
                                                  "data": {"target_portal": word}}))
        good = tmp / "good.conf"
        good.write_text(f"[DEFAULT]\nstate_path = {tmp / 'state'}\n")
        before = dump(tmp / "state" / "virtkit.sqlite")
        done = _run("virtkit", "boot", "new", "--image", "cirros", "--flavor", "m1.tiny",
                    "--volume", f"{tmp / 'vol.json'}:/dev/vdb", "--config", str(good))
        _clean(done, "virtkit", EXIT_USAGE)
        assert "target_iqn" in done.stderr
        assert [line for line in dump(tmp / "state" / "virtkit.sqlite")
                if line.startswith("instances ")] == [
                    line for line in before if line.startswith("instances ")]


@bounded(2, deadline_s=60, shrink=False)
@given(junk=st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s))
def test_recover_process_with_a_malformed_nova_row(tmp_path_factory, tally, junk):
    bed = NovaBed(tmp_path_factory.mktemp("nova"))
    try:
        good = bed.add(bdm={})
        broken = bed.add(bdm={"connection_info": "{" + junk})
        with tally.check("processes"):
            done = _run("virtkit-recover", "--config", str(bed.config), "--failed-host", FAILED,
                        "--confirm-fenced", "--volume-check", "none", "--host", HERE,
                        "--format", "json", "--nova-db", bed.nova_url)
            assert done.returncode == EXIT_FAILED, done.stderr
            assert "Traceback" not in done.stderr, done.stderr
            outcomes = {i["uuid"]: i for i in json.loads(done.stdout)["instances"]}
            assert outcomes[good]["outcome"] == "recovered"
            assert outcomes[broken]["outcome"] == "released"
            assert "connection_info" in outcomes[broken]["error"]
            assert "not valid JSON" in outcomes[broken]["error"]
            _clean(_run("virtkit-recover", "--config", str(bed.config), "--parallel", junk),
                   "virtkit-recover", EXIT_USAGE)
    finally:
        bed.nova.dispose()
