"""The host's `[agent]` option group: timeouts, polling, and whether legacy is allowed."""

from __future__ import annotations

from oslo_config import cfg

from virt.config import register_group_opts

GROUP = "agent"

AGENT_OPTS: list[cfg.Opt] = [
    cfg.FloatOpt(
        "timeout",
        default=30.0,
        min=0.1,
        help="Seconds to wait for the agent's reply to one request.",
    ),
    cfg.FloatOpt(
        "version_timeout",
        default=300.0,
        min=0.1,
        help="Readiness budget: seconds to keep probing the agent with 'version' before it is "
        "reported absent (a booting guest may reboot during configuration).",
    ),
    cfg.FloatOpt(
        "resetnetwork_timeout", default=60.0, min=0.1, help="Seconds to wait for 'resetnetwork'."
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.5,
        min=0.01,
        help="Seconds between checks for a reply when no watch event arrives.",
    ),
    cfg.BoolOpt(
        "allow_legacy",
        default=False,
        help="Allow the legacy password exchange (2^107-1 Diffie-Hellman, MD5 key derivation, "
        "unauthenticated AES-CBC) for guests whose agent does not offer v2. The legacy "
        "group is broken: anyone who sees the exchange can recover the password.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the [agent] option group."""
    register_group_opts(conf, GROUP, AGENT_OPTS)
