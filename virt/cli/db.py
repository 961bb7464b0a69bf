"""`virtkit db version|upgrade`: the state store's schema, moved only when asked to.

Every other command upgrades the schema on open while `[DEFAULT] db_auto_upgrade` is True
(the default, convenient for a SQLite store of one host). On a store shared by several
hosts (PostgreSQL) set it to False: one upgraded host then cannot move the schema under
the others; an operator runs `virtkit db upgrade` once every host runs the new virtkit.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from virt.cli.context import Context

if TYPE_CHECKING:
    from virt.store import Store


def _open(ctx: Context) -> Store:
    from virt.store import Store

    return Store(ctx.conf.state_connection, migrate=False, check_schema=False)


def _status(store: Store) -> dict[str, Any]:
    return store.schema_status().as_dict()


def cmd_db_version(ctx: Context, _args: argparse.Namespace) -> int:
    store = _open(ctx)
    try:
        data = {"store": store.where, **_status(store),
                "db_auto_upgrade": ctx.conf.db_auto_upgrade}
    finally:
        store.close()
    pairs = dict(data)
    pairs["current"] = ", ".join(data["current"]) or "none (empty database)"
    pairs["head"] = ", ".join(data["head"])
    ctx.out.fields(pairs, json_value=data)
    return 0


def cmd_db_upgrade(ctx: Context, _args: argparse.Namespace) -> int:
    store = _open(ctx)
    try:
        before = _status(store)
        with ctx.out.progress(f"Upgrading the schema of {store.where}"):
            store.upgrade_schema()
        after = _status(store)
    finally:
        store.close()
    old = ", ".join(before["current"]) or "empty"
    new = ", ".join(after["current"])
    text = (f"state store {store.where}: schema already at {new}" if before == after
            else f"state store {store.where}: schema upgraded from {old} to {new}")
    ctx.out.message(text, json_value={"store": store.where, "before": before["current"],
                                      "after": after["current"], "upgraded": before != after})
    return 0
