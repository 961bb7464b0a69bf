"""oslo.config options shared by every backend; each driver registers its own group.

Nothing here keeps global state: callers build a ConfigOpts with `build_conf()` and pass it on.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

from oslo_config import cfg

from virt.errors import ConfigError, InvalidRequest
from virt.model import Flavor

LOG = logging.getLogger(__name__)

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
        "(postgresql://user@host/db) when several hosts share it. A plain postgresql:// "
        "uses psycopg 3 (pip install 'virtkit[postgresql]'); postgresql+psycopg2:// works "
        "if psycopg2 is installed.",
    ),
    cfg.StrOpt(
        "secret_key_file",
        default="$state_path/secret.key",
        help="Fernet key that seals the secrets of volumes' connection_info (CHAP passwords) "
        "in the state store; created with mode 0600 on first use. Hosts that share a store "
        "must share this file (copy it, 0600); a row sealed with another key is an error "
        "naming this file.",
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
    cfg.BoolOpt(
        "db_auto_upgrade",
        default=True,
        help="Upgrade the state store's schema automatically when a command opens it. "
        "Convenient for a SQLite store of one host; on a store shared by several hosts "
        "(PostgreSQL) set it to False and run `virtkit db upgrade` once, when every host "
        "runs the new virtkit: an outdated schema is then an error, never a silent upgrade.",
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
                f"config file {path} "
                + ("is not a regular file" if path.exists() else "does not exist"),
                hint="pass --config FILE or set VIRTKIT_CONFIG to an existing file",
            )
        files.append(str(path))
    _parse_files(conf, files)
    if files:
        check_options(conf, None)
        _warn_unknown_groups(conf)
    for key, value in (overrides or {}).items():
        group, _, name = key.rpartition(".")
        conf.set_override(name, value, group=group or None)
    return conf


def _parse_files(conf: cfg.ConfigOpts, files: list[str]) -> None:
    """Read `files` into `conf`; ConfigError (exit 2) naming the file on any failure."""
    name = files[0] if files else "(none)"
    try:
        conf(args=[], project="virtkit", default_config_files=files, default_config_dirs=[])
    except cfg.ConfigFilesPermissionDeniedError:
        raise ConfigError(f"cannot read config file {name}: permission denied",
                          hint="make it readable by this user") from None
    except cfg.Error as exc:
        raise ConfigError(f"cannot read configuration: {describe_cfg_error(exc)}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start:exc.start + 1].hex()
        raise ConfigError(f"config file {name} is not UTF-8 text ({exc.reason}: byte 0x{byte})",
                          hint="save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from None


# Groups virtkit itself owns besides the drivers' (registered only by the code that uses them).
OWN_GROUPS = frozenset({"agent", "recovery", "conformance"})


Sections = dict[str, dict[str, list[str]]]


def _file_sections(conf: cfg.ConfigOpts) -> list[tuple[str, Sections]]:
    """(file, {section: {key: values}}) for every config file `conf` read."""
    parsed = []
    for path in conf.config_file or ():
        try:
            st = os.stat(path)
            sections = _parse_file(path, st.st_mtime_ns, st.st_size)
        except (OSError, cfg.ParseError):
            continue  # oslo.config already reported what it could not read
        parsed.append((path, sections))
    return parsed


@functools.lru_cache(maxsize=32)
def _parse_file(path: str, _mtime_ns: int, _size: int) -> Sections:
    """One parse per file content: every option group registered later checks against it.

    Callers must not modify the result.
    """
    sections: Sections = {}
    cfg.ConfigParser(path, sections).parse()
    return sections


def _known_keys(conf: cfg.ConfigOpts, group: str | None) -> set[str]:
    """The keys a file may set in `group` ([DEFAULT] for None): names and deprecated names."""
    names = list(conf) if group is None else list(conf[group])
    section = group or "DEFAULT"
    known: set[str] = set()
    for name in names:
        try:
            opt = conf._get_opt_info(name, group)["opt"]
        except (cfg.NoSuchOptError, KeyError):
            continue  # a group name when listing [DEFAULT]
        known.update({opt.dest, opt.name, opt.name.replace("-", "_")})
        for old in opt.deprecated_opts or ():
            if (old.group or section) == section and old.name:
                known.update({old.name, old.name.replace("-", "_")})
    return known


def check_options(conf: cfg.ConfigOpts, group: str | None) -> None:
    """Refuse options the config files set in `group` ([DEFAULT] for None) that nobody
    registered (a typo must not be ignored), and values that do not parse.

    Call once every option of the group is registered; ConfigError (exit 2) names the
    option, the file and the closest known option.
    """
    section = group or "DEFAULT"
    known: set[str] | None = None
    for path, sections in _file_sections(conf):
        keys: dict[str, list[str]] = sections.get(section, {})
        if not keys:
            continue
        if known is None:
            known = _known_keys(conf, group)
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                raise ConfigError(
                    f"unknown option '{key}' in [{section}] of {path}",
                    hint=f"did you mean '{close[0]}'?" if close
                    else "`virtkit config sample` lists every option",
                )
        for key in keys:
            try:
                _ = conf[key] if group is None else conf[group][key]
            except cfg.NoSuchOptError:
                continue  # a deprecated name: oslo.config reads it under the new one
            except cfg.Error as exc:
                reason = describe_cfg_error(exc).rpartition(" is not valid: ")[2]
                raise ConfigError(
                    f"invalid value for option '{key}' in [{section}] of {path}: {reason}"
                ) from None


def _warn_unknown_groups(conf: cfg.ConfigOpts) -> None:
    """An unknown group is only a warning: a third-party plugin may own it."""
    groups = {section for _path, sections in _file_sections(conf) for section in sections}
    unknown = groups - {"DEFAULT"} - OWN_GROUPS - set(conf)
    if not unknown:
        return
    from virt.driver.loader import installed_drivers

    unknown -= set(installed_drivers())
    for group in sorted(unknown):
        LOG.warning("config group [%s] is not virtkit's nor an installed driver's; its options "
                    "are ignored unless a plugin reads them", group)


def describe_cfg_error(exc: BaseException) -> str:
    """oslo.config's message without its LocationInfo(...) reprs, on one line."""
    text = str(getattr(exc, "msg", None) or exc)
    text = re.sub(r" from LocationInfo\(location=<[^>]*>, detail='([^']*)'\)", r" in \1", text)
    return " ".join(text.split())


def register_group_opts(conf: cfg.ConfigOpts, group: str, opts: Sequence[cfg.Opt]) -> None:
    """Register an option group; safe to call more than once.

    Then the group's options in the config files are checked: an unknown one (a typo) or
    a value that does not parse is a ConfigError. Register every option of a group in one
    call (or check_options() after the last).
    """
    conf.register_group(cfg.OptGroup(group))
    conf.register_opts(list(opts), group=group)
    check_options(conf, group)


#: Mode of a state directory virtkit creates: only its owner may list or write it (the
#: store in it holds volume secrets, and its files are 0600), but others may pass through
#: it, because instances_path usually lives under state_path and the hypervisor (qemu's own
#: user under qemu:///system) must reach the disks there.
STATE_DIR_MODE = 0o711


def make_state_dir(conf: cfg.ConfigOpts) -> None:
    """Create `state_path` with STATE_DIR_MODE; an existing directory is left as it is.

    ConfigError (exit 2) naming state_path and the OS error if it cannot be created.
    """
    path = Path(conf.state_path).expanduser()
    hint = "set [DEFAULT] state_path to a directory this user can create or write"
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"state_path {path} is not a directory", hint=hint)
        return
    try:
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        path.chmod(STATE_DIR_MODE)  # whatever the umask
    except OSError as exc:
        raise ConfigError(f"cannot create state_path {path}: {exc.strerror or exc}",
                          hint=hint) from None


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
