"""The guest agent's configuration: an INI file (section [agent]) read with configparser."""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any

from guest_agent.protocol import MAX_VALUE_BYTES

DEFAULT_CONFIG = "/etc/virtkit-agent.conf"
VIRTIO_PORT = "/dev/virtio-ports/org.virtkit.agent.0"


class ConfigError(Exception):
    """The agent's configuration is missing or wrong."""


def _default_user() -> str:
    return "Administrator" if sys.platform == "win32" else "root"


@dataclass(frozen=True)
class AgentConfig:
    """Every option of the [agent] section, with its default."""

    transport: str = "xenstore"  # xenstore | virtio-serial
    xenstore_path: str = ""  # empty: $XENSTORED_PATH, else /dev/xen/xenbus
    virtio_port: str = VIRTIO_PORT
    poll_interval: float = 1.0  # a safety net: watches wake the agent at once
    xenstore_timeout: float = 10.0
    user: str = field(default_factory=_default_user)
    password_method: str = "auto"  # auto | chpasswd | shadow | windows
    chpasswd_path: str = "chpasswd"
    chpasswd_root: str = ""  # chpasswd -R DIR (a chroot holding etc/shadow)
    crypt_method: str = ""  # chpasswd -c METHOD; empty: the system's PAM default
    shadow_path: str = "/etc/shadow"
    allow_legacy: bool = True
    offer_v2: bool = True  # false: neither announce nor accept v2 (emulates an old agent)
    inject_allowed_paths: tuple[str, ...] = ("/root/.ssh",)
    max_value_bytes: int = MAX_VALUE_BYTES
    network_config_path: str = "/etc/network/interfaces"
    hostname_path: str = "/etc/hostname"
    network_restart_command: str = ""
    update_sha256: str = ""  # empty: agentupdate is refused
    update_dir: str = "/var/lib/virtkit-agent/updates"
    update_command: str = ""
    update_max_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"

    def with_overrides(self, **values: Any) -> AgentConfig:
        return validate(replace(self, **{k: v for k, v in values.items() if v is not None}))


def load(path: str | None = None) -> AgentConfig:
    """Read `path` (or DEFAULT_CONFIG when it exists); unknown options are an error."""
    config = AgentConfig()
    target = path or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if target is None:
        return validate(config)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(target, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {target}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"{target} is not a valid INI file: {exc}") from None
    if not parser.has_section("agent"):
        return validate(config)
    known = {f.name: f for f in fields(AgentConfig)}
    values: dict[str, Any] = {}
    for key, raw in parser.items("agent"):
        if key not in known:
            raise ConfigError(f"{target}: unknown option [agent] {key}")
        default = getattr(config, key)
        try:
            if isinstance(default, bool):
                values[key] = parser.getboolean("agent", key)
            elif isinstance(default, int):
                values[key] = int(raw)
            elif isinstance(default, float):
                values[key] = float(raw)
            elif isinstance(default, tuple):
                values[key] = tuple(p.strip() for p in raw.split(",") if p.strip())
            else:
                values[key] = raw.strip()
        except ValueError:
            raise ConfigError(f"{target}: [agent] {key} = {raw!r} is not a valid value") from None
    return validate(replace(config, **values))


def validate(config: AgentConfig) -> AgentConfig:
    if config.transport not in ("xenstore", "virtio-serial"):
        raise ConfigError(f"transport {config.transport!r}: use xenstore or virtio-serial")
    if config.password_method not in ("auto", "chpasswd", "shadow", "windows"):
        raise ConfigError(
            f"password_method {config.password_method!r}: use auto, chpasswd, shadow or windows"
        )
    if not config.user or any(ch in config.user for ch in ":\n\r\0") or len(config.user) > 64:
        raise ConfigError(f"user {config.user!r} is not a valid account name")
    if config.poll_interval <= 0 or config.xenstore_timeout <= 0:
        raise ConfigError("poll_interval and xenstore_timeout must be positive")
    if config.max_value_bytes < 256:
        raise ConfigError("max_value_bytes must be at least 256")
    for path in config.inject_allowed_paths:
        if not os.path.isabs(path):
            raise ConfigError(f"inject_allowed_paths: {path!r} is not an absolute path")
    digest = config.update_sha256.lower()
    if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        raise ConfigError("update_sha256 must be 64 hex digits (or empty to refuse agentupdate)")
    return config
