"""oslo.config options shared by every backend; each driver registers its own group.

Nothing here keeps global state: callers build a ConfigOpts with `build_conf()` and pass it on.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

from oslo_config import cfg

from virt.errors import ConfigError, InvalidRequest
from virt.model import Flavor

DEFAULT_STATE_PATH = os.path.join(os.path.expanduser("~"), ".local", "state", "virtkit")

DEFAULT_FLAVORS = [
    "m1.tiny:1:512:1",
    "m1.small:1:2048:20",
    "m1.medium:2:4096:40",
    "m1.large:4:8192:80",
]

COMMON_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "compute_driver",
        default="fake",
        help="Compute driver: an entry point of 'virtkit.compute_drivers' (fake, libvirt, docker, "
        "...) or a Nova-style name such as 'libvirt.LibvirtDriver'.",
    ),
    cfg.StrOpt(
        "state_path",
        default=DEFAULT_STATE_PATH,
        sample_default="~/.local/state/virtkit",
        help="Directory where virtkit keeps its state.",
    ),
    cfg.StrOpt(
        "state_connection",
        default="sqlite:///$state_path/virtkit.sqlite",
        secret=True,
        help="SQLAlchemy URL of the state store. SQLite for one host; PostgreSQL or MySQL "
        "(postgresql://user@host/db) when several hosts share it.",
    ),
    cfg.StrOpt(
        "instances_path",
        default="$state_path/instances",
        help="Where instance disks and per-instance files live.",
    ),
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Name of this compute host, as recorded in the state store.",
    ),
    cfg.MultiStrOpt(
        "flavors",
        default=DEFAULT_FLAVORS,
        help="Named flavors, one per line: NAME:VCPUS:MEMORY_MB:ROOT_GB[:EPHEMERAL_GB[:SWAP_MB]].",
    ),
]


def register_common_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(COMMON_OPTS)


def build_conf(
    config_file: str | os.PathLike[str] | None = None,
    *,
    overrides: dict[str, object] | None = None,
) -> cfg.ConfigOpts:
    """A fresh ConfigOpts with the common options, read from `config_file` if given.

    `overrides` sets `[DEFAULT]` options (or 'group.option') after parsing, for tests and
    embedders.
    """
    conf = cfg.ConfigOpts()
    register_common_opts(conf)
    files: list[str] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist",
                hint="pass --config FILE or set VIRTKIT_CONFIG to an existing file",
            )
        files.append(str(path))
    try:
        conf(args=[], project="virtkit", default_config_files=files, default_config_dirs=[])
    except cfg.Error as exc:
        raise ConfigError(f"cannot read configuration: {exc}") from None
    for key, value in (overrides or {}).items():
        group, _, name = key.rpartition(".")
        conf.set_override(name, value, group=group or None)
    return conf


def register_group_opts(conf: cfg.ConfigOpts, group: str, opts: Sequence[cfg.Opt]) -> None:
    """Register a driver's option group; safe to call more than once."""
    conf.register_group(cfg.OptGroup(group))
    conf.register_opts(list(opts), group=group)


def parse_flavor(spec: str) -> Flavor:
    """Parse 'NAME:VCPUS:MEMORY_MB:ROOT_GB[:EPHEMERAL_GB[:SWAP_MB]]'."""
    parts = spec.strip().split(":")
    if not 4 <= len(parts) <= 6:
        raise ConfigError(
            f"flavor {spec!r} is malformed",
            hint="use NAME:VCPUS:MEMORY_MB:ROOT_GB[:EPHEMERAL_GB[:SWAP_MB]]",
        )
    name, *numbers = parts
    try:
        values = [int(n) for n in numbers]
    except ValueError:
        raise ConfigError(f"flavor {spec!r} has a non-integer size") from None
    values += [0] * (5 - len(values))
    try:
        return Flavor(
            name=name,
            vcpus=values[0],
            memory_mb=values[1],
            root_gb=values[2],
            ephemeral_gb=values[3],
            swap_mb=values[4],
        )
    except InvalidRequest as exc:
        raise ConfigError(f"flavor {spec!r}: {exc.message}") from None


def configured_flavors(conf: cfg.ConfigOpts) -> dict[str, Flavor]:
    flavors = (parse_flavor(spec) for spec in conf.flavors)
    return {flavor.name: flavor for flavor in flavors}


def sample_config(groups: Iterable[tuple[str | None, Sequence[cfg.Opt]]]) -> str:
    """Render an INI sample with every option and its help, as `virtkit config sample` prints."""
    lines: list[str] = []
    for group, opts in groups:
        lines.append(f"[{group or 'DEFAULT'}]")
        lines.append("")
        for opt in opts:
            for help_line in _wrap(opt.help or ""):
                lines.append(f"# {help_line}")
            lines.append(f"# ({type(opt).__name__.removesuffix('Opt').lower()} value)")
            default = opt.sample_default if opt.sample_default is not None else opt.default
            if isinstance(default, list):
                values = default or [""]
                lines.extend(f"#{opt.dest} = {value}" for value in values)
            else:
                lines.append(f"#{opt.dest} = {'' if default is None else default}")
            lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int = 76) -> list[str]:
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        lines.append(current)
    return lines
