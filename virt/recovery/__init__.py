"""Recover a failed host's instances on this host, or this host's own after a reboot.

- `engine`: `Recoverer`, one run: plan -> claim -> execute, per instance, in parallel.
- `plan`: the journaled steps of one instance (refresh volumes, re-home, spawn, attach ...).
- `journal`: claims (who recovers which instance) and the per-step journal, in the store.
- `sources`: where instances come from: virtkit's store (`StoreSource`) or a Nova
  database (`NovaSource`).
- `fence`: is the failed host fenced? `lock`: one run per target host.
- `report`: what a run reports. `options`: the `[recovery]` options and `RecoveryOptions`.

Only the options are imported here (`virtkit config sample` lists them); import the rest
from its module.
"""

from virt.recovery.options import RECOVERY_OPTS, RecoveryOptions, register_opts

__all__ = ["RECOVERY_OPTS", "RecoveryOptions", "register_opts"]
