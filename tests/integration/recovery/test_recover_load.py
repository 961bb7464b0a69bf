"""Many recoverers on one PostgreSQL store: every instance exactly once, no deadlock, no lost
volume attachment, and the time against one recoverer doing the same work.

`make test` runs 8 recoverers on 400 instances of 4 failed hosts (1 volume each);
`make soak` (VIRTKIT_SOAK=1) the issue's 2,000. Each recoverer is a real `virtkit-recover`
process on the fake driver (50 ms per spawn, 20 ms per volume attach); two recoverers share
each failed host, so that they contend for its instances.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.pg import fresh_database, pg_url  # noqa: F401  (fixture)
from tests.recovery_helpers import driver_for, record_instances
from tests.testbed import env
from virt.recovery.journal import RecoveryJournal
from virt.store import Store

RECOVER = [sys.executable, "-m", "virt.cli.recover"]
SOAK = os.environ.get("VIRTKIT_SOAK") == "1"
INSTANCES = 2000 if SOAK else 400
FAILED_HOSTS = [f"host-a{i}" for i in range(4)]
RECOVERERS = [f"host-b{i}" for i in range(8)]  # b0, b1 take a0; b2, b3 take a1; ...


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "virtkit.conf"
    path.write_text("\n".join([
        "[DEFAULT]", "compute_driver = fake", f"state_path = {tmp_path / 'state'}",
        f"state_connection = {url}", "[fake]",
        # The engine's and the SAN's waits (as bench/recover_scale.py): what recoverers overlap.
        "spawn_latency_ms = 50", "volume_latency_ms = 20", "[recovery]",
        "claim_lease_seconds = 60"]) + "\n")
    return path


def _record(url: str) -> dict[str, list[str]]:
    per_host = INSTANCES // len(FAILED_HOSTS)
    with Store(url) as store:
        return {host: record_instances(store, host, per_host, volumes=1, prefix=host)
                for host in FAILED_HOSTS}


def _run(config: Path, pairs: list[tuple[str, str]]) -> tuple[float, list[dict]]:
    """Start one virtkit-recover per (failed host, this host) at once; wait for all."""
    began = time.monotonic()
    procs = [subprocess.Popen(
        [*RECOVER, "--config", str(config), "--format", "json", "--failed-host", failed,
         "--confirm-fenced", "--volume-check", "none", "--parallel", "4", "--host", host],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for failed, host in pairs]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)  # a deadlock would end here
        assert proc.returncode == 0, err[-2000:]
        reports.append(json.loads(out))
    return time.monotonic() - began, reports


def _check_exactly_once(config: Path, url: str, recorded: dict[str, list[str]],
                        hosts: list[str]) -> None:
    everything = sorted(u for uuids in recorded.values() for u in uuids)
    spawned = Counter(u for host in hosts for u in driver_for(config, host).list_instance_uuids())
    assert sorted(spawned) == everything and set(spawned.values()) == {1}
    with Store(url) as store:
        journal = RecoveryJournal(store, host="checker")
        for uuid in everything:
            record = store.get_instance(uuid)
            assert record.host in hosts
            spawns = [e for e in journal.entries(uuid)
                      if e["step"] == "spawn" and e["status"] == "done"]
            assert len(spawns) == 1, (uuid, spawns)
            volumes = store.list_block_devices(uuid)
            assert [v.mountpoint for v in volumes] == ["/dev/vdb"], uuid  # none lost


@pytest.mark.slow
def test_eight_recoverers_recover_every_instance_exactly_once(tmp_path, pg_url, capsys):  # noqa: F811
    config = _config(tmp_path, pg_url)
    recorded = _record(pg_url)
    pairs = [(FAILED_HOSTS[i // 2], host) for i, host in enumerate(RECOVERERS)]
    many, reports = _run(config, pairs)
    outcomes = Counter(i["outcome"] for r in reports for i in r["instances"])
    assert outcomes["recovered"] == INSTANCES, outcomes
    _check_exactly_once(config, pg_url, recorded, RECOVERERS)

    # The same work for one recoverer per failed host, one after the other: the baseline.
    with fresh_database(env("VIRTKIT_TEST_PG_URL")) as single_url:
        single_dir = tmp_path / "single"
        single_dir.mkdir()
        single_config = _config(single_dir, single_url)
        single_recorded = _record(single_url)
        one = 0.0
        for failed in FAILED_HOSTS:
            seconds, _ = _run(single_config, [(failed, "host-c")])
            one += seconds
        _check_exactly_once(single_config, single_url, single_recorded, ["host-c"])
    with capsys.disabled():  # the figures belong in make test's output
        print(f"\nrecover load: {INSTANCES} instances of {len(FAILED_HOSTS)} failed hosts, "
              f"{len(RECOVERERS)} recoverers on one PostgreSQL store in {many:.1f} s; one "
              f"recoverer {one:.1f} s = {one / many:.2f}x; each instance exactly once, "
              f"{INSTANCES} volume attachments kept")
