"""The state store shared by several processes on the test bed's PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.pg import pg_url  # noqa: F401 - fixture
from virt.model import Flavor, Instance, new_uuid
from virt.store import Store, instances
from virt.store import migrate as store_migrate

pytestmark = pytest.mark.postgres

OPEN_AND_CREATE = """
import sys
from virt.model import Flavor, Instance, new_uuid
from virt.store import Store
with Store(sys.argv[1]) as store:
    store.create_instance(Instance(uuid=new_uuid(), name=sys.argv[2], flavor=Flavor("f", 1, 64)))
"""


def test_concurrent_first_opens_migrate_once(pg_url):  # noqa: F811
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_AND_CREATE, pg_url, f"vm{i}"],
                         stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with Store(pg_url) as store:
        assert sorted(r.name for r in store.list_instances()) == ["vm0", "vm1", "vm2"]
        with store.engine.connect() as conn:
            assert store_migrate.current_revisions(conn) == store_migrate.head_revisions()
            versions = conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar()
    assert versions == len(store_migrate.head_revisions())


def test_exposed_tables_support_skip_locked_claims(pg_url):  # noqa: F811
    with Store(pg_url) as store:
        for name in ("a", "b"):
            store.create_instance(Instance(uuid=new_uuid(), name=name, flavor=Flavor("f", 1, 64)))
        claim = (
            sa.select(instances.c.name)
            .order_by(instances.c.name)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with store.transaction() as first, store.transaction() as second:
            assert first.execute(claim).scalar_one() == "a"
            assert second.execute(claim).scalar_one() == "b"


def test_a_second_store_sees_updates_of_the_first(pg_url):  # noqa: F811
    with Store(pg_url) as one, Store(pg_url) as two:
        record = one.create_instance(
            Instance(uuid=new_uuid(), name="shared", flavor=Flavor("f", 1, 64))
        )
        one.update_instance(record.uuid, vm_state="active")
        assert two.find_instance("shared").vm_state == "active"
