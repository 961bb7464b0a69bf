"""Options that mean the same thing in every driver's group, under one name each.

A driver lists the ones it has in its `config_opts` (with its own default where the engine
needs one); an old name a driver used before is kept as a deprecated alias, which
oslo.config reads and warns about once, naming the new option.
"""

from __future__ import annotations

from oslo_config import cfg


def call_timeout(default: float = 30.0, *, deprecated_name: str | None = None) -> cfg.Opt:
    """Bound on each call to the engine (and on opening the connection to it)."""
    return cfg.FloatOpt(
        "call_timeout", default=default, min=1.0, deprecated_name=deprecated_name,
        help="Upper bound in seconds on each call to the engine, opening the connection "
        "included (operations that wait for the guest, such as a power-off, add their own "
        "time).")


def reboot_timeout(default: float = 60.0, *, deprecated_name: str | None = None) -> cfg.Opt:
    """Seconds a soft reboot waits for the guest to stop before forcing it."""
    return cfg.FloatOpt(
        "reboot_timeout", default=default, min=0.0, deprecated_name=deprecated_name,
        help="Seconds a soft reboot waits for the guest to stop before it is forced (a "
        "caller's shorter timeout wins).")


def stopped_event_delay(default: float = 15.0) -> cfg.Opt:
    """Seconds a STOPPED event is held back (a start within it cancels both)."""
    return cfg.FloatOpt(
        "stopped_event_delay", default=default, min=0.0,
        help="Seconds a STOPPED lifecycle event is held back; a start within it cancels "
        "both, so a reboot is not reported as a shutdown.")
