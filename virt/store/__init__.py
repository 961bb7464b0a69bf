"""The state store: what the compute service knows about instances, volumes, VIFs, hosts and
recoveries (SQLAlchemy; SQLite by default, PostgreSQL or MySQL by URL).

One facade, `Store`; inside the package: engine set-up (`engine`), the one schema
(`schema`), the typed records it returns (`records`), the statements it builds
(`statements`), statements run straight on the DBAPI cursor (`direct`) and the alembic
migrations (`migrate`, `migrations/`). No SQL on these tables outside this package, except
recovery's statements on its own claim and journal tables, which need `FOR UPDATE SKIP
LOCKED` and direct execution (`Store.engine`, `Store.transaction()` and the Table objects
here are public for them).
"""

from virt.store.direct import DirectStatement
from virt.store.engine import database_url, driver_hint, server_connect_args
from virt.store.facade import Store
from virt.store.migrate import SchemaStatus
from virt.store.records import (
    AttachmentRecord,
    BlockDeviceRecord,
    EventRecord,
    HostRecord,
    InstanceRecord,
    VifRecord,
    utcnow,
)
from virt.store.schema import (
    block_devices,
    hosts,
    instance_events,
    instances,
    metadata,
    recovery_claims,
    recovery_journal,
    vifs,
)
from virt.store.statements import ANY

__all__ = [
    "ANY",
    "AttachmentRecord",
    "BlockDeviceRecord",
    "DirectStatement",
    "EventRecord",
    "HostRecord",
    "InstanceRecord",
    "SchemaStatus",
    "Store",
    "VifRecord",
    "block_devices",
    "database_url",
    "driver_hint",
    "hosts",
    "instance_events",
    "instances",
    "metadata",
    "recovery_claims",
    "recovery_journal",
    "server_connect_args",
    "utcnow",
    "vifs",
]
