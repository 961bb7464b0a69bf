"""Where `virtkit-recover --nova-db` takes Nova's database URL from: never the password
from the command line, where every user sees it (`ps`, /proc/PID/cmdline, shell history)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from oslo_config import cfg

from virt.errors import ConfigError
from virt.store import database_url

ENV_VAR = "VIRTKIT_NOVA_DB"
WHERE = (f"[recovery] nova_connection in the config file, ${ENV_VAR}, or a file (mode 0600) "
         "named by --nova-db-file or [recovery] nova_connection_file")


def nova_db_url(*, given: str | None, url_file: str | None, conf: cfg.ConfigOpts,
                environ: Mapping[str, str] = os.environ) -> str | None:
    """Nova's database URL for this run, or None to read virtkit's own store.

    `given` is `--nova-db`'s value: None (not given), "" (given alone: the configured URL)
    or a URL, which must hold no password. `url_file` is `--nova-db-file`.
    """
    if given:
        if database_url(given, what="--nova-db").password:
            raise ConfigError("--nova-db: a password on the command line is visible to every "
                              "user of this host (process list, shell history)",
                              hint=f"give the URL through {WHERE}")
        return given
    if url_file:
        return _read_url_file(url_file, "--nova-db-file")
    if given is None:
        return None
    if environ.get(ENV_VAR):
        return environ[ENV_VAR]
    if conf.recovery.nova_connection_file:
        return _read_url_file(conf.recovery.nova_connection_file,
                              "[recovery] nova_connection_file")
    if conf.recovery.nova_connection:
        return str(conf.recovery.nova_connection)
    raise ConfigError("--nova-db: no URL of Nova's database is configured",
                      hint=f"set {WHERE}, or give a URL without a password")


def _read_url_file(path: str, what: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc})",
                          hint="the file holds one line: Nova's database URL") from None
    url = next((line.strip() for line in lines if line.strip()), "")
    if not url:
        raise ConfigError(f"{what} {path} is empty",
                          hint="the file holds one line: Nova's database URL")
    return url
