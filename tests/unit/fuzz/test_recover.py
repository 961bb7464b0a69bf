"""`virtkit-recover`, generated: random command lines, and malformed rows in a Nova database
(SQLite, Nova's column names): the bad instance is reported with its reason, the others are
still recovered; `--volume-check none` never reports a volume reachable."""

from __future__ import annotations

import datetime
import json
import uuid as uuid_module
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.recovery_helpers import iscsi_info
from tests.unit.fuzz.helpers import assert_clean_failure, bounded, dump, run_main
from virt.cli.recover import main
from virt.config import build_conf
from virt.errors import EXIT_FAILED
from virt.store import Store

# Nova's two tables as recovery reads them (nova/db/main/models.py), on SQLite.
NOVA_DDL = [
    """CREATE TABLE instances (created_at DATETIME, updated_at DATETIME, deleted_at DATETIME,
       id INTEGER PRIMARY KEY, user_id VARCHAR(255), project_id VARCHAR(255),
       image_ref VARCHAR(255), power_state INTEGER, vm_state VARCHAR(255), memory_mb INTEGER,
       vcpus INTEGER, hostname VARCHAR(255), host VARCHAR(255), display_name VARCHAR(255),
       uuid VARCHAR(36) NOT NULL UNIQUE, task_state VARCHAR(255), root_gb INTEGER,
       ephemeral_gb INTEGER, node VARCHAR(255), deleted INTEGER, cleaned INTEGER)""",
    """CREATE TABLE block_device_mapping (created_at DATETIME, updated_at DATETIME,
       deleted_at DATETIME, id INTEGER PRIMARY KEY, device_name VARCHAR(255),
       delete_on_termination BOOLEAN, volume_id VARCHAR(36), connection_info TEXT,
       instance_uuid VARCHAR(36), deleted INTEGER, source_type VARCHAR(255),
       destination_type VARCHAR(255), device_type VARCHAR(255), disk_bus VARCHAR(255),
       boot_index INTEGER, image_id VARCHAR(36))""",
]
FAILED, HERE = "nova-a", "host-b"


class NovaBed:
    """A virtkit store and config on the fake driver, and a Nova database beside them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.database = tmp / "state" / "virtkit.sqlite"
        self.config = tmp / "virtkit.conf"
        self.config.write_text(f"[DEFAULT]\nstate_path = {tmp / 'state'}\nhost = {HERE}\n")
        self.nova_url = f"sqlite:///{tmp / 'nova.sqlite'}"
        self.nova = sa.create_engine(self.nova_url)
        with self.nova.begin() as conn:
            for ddl in NOVA_DDL:
                conn.exec_driver_sql(ddl)
        self.ids = iter(range(1, 10**6))
        Store.from_conf(build_conf(str(self.config))).close()  # the store exists from the start

    def add(self, *, bdm: dict | None = None, **values: object) -> str:
        """One Nova instance on the failed host (and a volume BDM if `bdm`)."""
        uuid, id = str(uuid_module.uuid4()), next(self.ids)
        row = {"id": id, "uuid": uuid, "host": FAILED, "node": f"{FAILED}.example",
               "hostname": f"web-{id}", "display_name": f"web {id}", "vm_state": "active",
               "power_state": 1, "vcpus": 1, "memory_mb": 64, "root_gb": 1, "ephemeral_gb": 0,
               "image_ref": "cirros", "deleted": 0, "cleaned": 0,
               "created_at": datetime.datetime(2024, 5, 1), **values}
        with self.nova.begin() as conn:
            conn.execute(sa.table("instances", *map(sa.column, row)).insert().values(row))
            if bdm is not None:
                bdm = {"instance_uuid": uuid, "device_name": "/dev/vdb", "deleted": 0,
                       "source_type": "volume", "destination_type": "volume",
                       "disk_bus": "virtio", "connection_info": json.dumps(iscsi_info(id)),
                       **bdm}
                conn.execute(sa.table("block_device_mapping", *map(sa.column, bdm))
                             .insert().values(bdm))
        return uuid

    def recover(self, *extra: str):
        return run_main(main, ["--config", str(self.config), "--failed-host", FAILED,
                               "--confirm-fenced", "--volume-check", "none", "--host", HERE,
                               "--format", "json", "--nova-db", self.nova_url, *extra])

    def clear(self) -> None:
        """Remove every Nova row (each example brings its own)."""
        with self.nova.begin() as conn:
            conn.exec_driver_sql("DELETE FROM block_device_mapping")
            conn.exec_driver_sql("DELETE FROM instances")

    def hosts(self) -> dict[str, str]:
        with self.nova.connect() as conn:
            return dict(conn.execute(sa.text("SELECT uuid, host FROM instances")).all())


@pytest.fixture
def nova(tmp_path):
    bed = NovaBed(tmp_path)
    yield bed
    bed.nova.dispose()


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6)
text_or_junk = st.text(max_size=30) | json_value.map(json.dumps)
INT64 = 2**63 - 1  # what a SQLite INTEGER holds
number = st.one_of(st.integers(min_value=-INT64, max_value=0),
                   st.integers(min_value=10**7, max_value=INT64), st.none())
#: (column values, BDM values) of one malformed Nova instance.
bad_rows = st.one_of(
    st.builds(lambda v: ({"vcpus": v}, None), number),
    st.builds(lambda v: ({"memory_mb": v}, None), number),
    st.builds(lambda v: ({"root_gb": v}, None), st.integers(min_value=-INT64, max_value=-1)),
    st.builds(lambda v: ({"ephemeral_gb": v}, None), st.integers(min_value=-INT64, max_value=-1)),
    st.builds(lambda v: ({"image_ref": v}, None), st.sampled_from(["", None])),
    st.builds(lambda v: ({}, {"connection_info": v}), text_or_junk),
    st.builds(lambda v: ({}, {"connection_info": json.dumps(v)}),
              st.fixed_dictionaries({"driver_volume_type": st.text(max_size=8) | json_value,
                                     "data": json_value})),
    st.builds(lambda v: ({}, {"connection_info": json.dumps(v)}),
              st.fixed_dictionaries({"driver_volume_type": st.just("iscsi"),
                                     "data": st.dictionaries(
                                         st.sampled_from(["target_portal", "target_iqn",
                                                          "target_lun", "auth_method"]),
                                         json_value, max_size=4)})),
    st.builds(lambda v: ({}, {"device_name": v}), st.text(max_size=12)),
)


@bounded(60, deadline_s=20)
@given(bad=bad_rows)
def test_a_malformed_nova_row_is_reported_and_the_others_recovered(nova, tally, bad):
    values, bdm = bad
    nova.clear()
    with tally.check("nova-rows"):
        good = nova.add(bdm={})
        broken = nova.add(bdm=bdm, **values)
        ran = nova.recover()
        assert "Traceback" not in ran.err, ran.err
        assert ran.code in (0, EXIT_FAILED), (ran.code, ran.err)
        report = json.loads(ran.out)
        outcomes = {i["uuid"]: i for i in report["instances"]}
        assert outcomes[good]["outcome"] == "recovered", outcomes[good]
        item = outcomes[broken]
        if item["outcome"] != "recovered":  # some are legal after all (a huge root_gb ...)
            assert item["outcome"] in ("released", "failed") and ran.code == EXIT_FAILED
            reason = item["error"] or ""
            assert reason.strip(), item
            assert not reason.startswith(("KeyError", "TypeError", "ValueError",
                                          "JSONDecodeError", "AttributeError")), reason
            if item["outcome"] == "released":  # refused before anything changed
                assert nova.hosts()[broken] == FAILED
            # A failed one (a size this host cannot give) was re-homed first: the journal
            # and a retry resolve it (docs/recovery.md).
        assert nova.hosts()[good] == HERE


def test_volume_check_none_reports_not_checked(nova):
    uuid = nova.add(bdm={})
    planned = nova.recover("--dry-run")
    assert planned.code == 0, planned.err
    volumes = json.loads(planned.out)["instances"][0]["volumes"]
    assert [v["status"] for v in volumes] == ["not checked"]
    table = run_main(main, ["--config", str(nova.config), "--failed-host", FAILED,
                            "--confirm-fenced", "--volume-check", "none", "--host", HERE,
                            "--dry-run", "--nova-db", nova.nova_url])
    assert "volume /dev/vdb not checked" in table.out and "reachable" not in table.out
    done = nova.recover()
    item = json.loads(done.out)["instances"][0]
    assert (item["uuid"], item["outcome"]) == (uuid, "recovered")
    assert [v["status"] for v in item["volumes"]] == ["attached"]  # the attach went through


RECOVER_TOKENS = ["--failed-host", "--resume-local", "--instance", "--dry-run", "--parallel",
                  "--confirm-fenced", "--allow-missing-volumes", "--rebuild-missing-disks",
                  "--nova-db", "--nova-db-file", "--nova-image-dir", "--host",
                  "--volume-check", "probe", "none", "--format", "json", "0", "-1", "x",
                  "sqlite://", "postgresql://u:pw@h/db", "--"]


@bounded(100)
@given(argv=st.lists(st.sampled_from(RECOVER_TOKENS) | st.text(max_size=10), max_size=7))
def test_random_recover_command_lines(nova, tally, argv):
    assume("\x00" not in "".join(argv) and not {"--config", "-v", "--verbose"} & set(argv))
    with tally.check("recover-cli"):
        before = dump(nova.database)
        ran = run_main(main, ["--config", str(nova.config), *argv])
        if ran.code != 0:
            assert_clean_failure(ran, "virtkit-recover")
            assert dump(nova.database) == before, argv
