"""Secrets at rest: the secret values of a volume's connection_info, sealed in the store.

A block device's `connection_info` is kept as Nova keeps it, JSON text, except that every
string value under a secret key (`virt.masking.is_secret_key`: `auth_password`, ...) is
replaced by `vk-sealed:1:<Fernet token>`. The key is a Fernet key in `[DEFAULT]
secret_key_file`, created 0600 on first use; hosts sharing a store share the file. Rows
written before sealing (plain values) read as they are and are sealed when next written.
Nothing outside the store sees a sealed value: the facade opens them as it reads a row.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from virt.errors import StoreError
from virt.masking import is_secret_key, remember

LOG = logging.getLogger(__name__)

#: What a sealed value starts with (the version is that of this format).
SEALED_PREFIX = "vk-sealed:1:"

_KEY_HINT = ("hosts that share a state store need the same [DEFAULT] secret_key_file: copy it "
             "(mode 0600) from the host that wrote the row")


def is_sealed(value: object) -> bool:
    """Whether `value` is a sealed secret as the store writes it."""
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


class Sealer:
    """Seals and opens the secret values of connection_info documents with one key file.

    Without a key file (`Store(url)` with no `secret_key_file`) it writes values as they are
    and refuses to open sealed ones, saying which option is missing.
    """

    def __init__(self, key_file: str | os.PathLike[str] | None) -> None:
        self.key_file = None if key_file is None else Path(key_file).expanduser()
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Sealer({str(self.key_file) if self.key_file else None!r})"

    # -- documents ---------------------------------------------------------------------------

    def dump(self, info: Mapping[str, Any]) -> str:
        """`info` as the JSON text the store keeps, its secret values sealed."""
        if self.key_file is None:
            return json.dumps(dict(info))
        return json.dumps(self._walk(dict(info), self._seal_value))

    def load(self, text: str, *, what: str) -> dict[str, Any]:
        """The JSON text of a row as the document it holds, sealed values opened (`what`
        names the row in errors)."""
        data = json.loads(text)
        opened: dict[str, Any] = self._walk(data, lambda value: self._open_value(value, what))
        return opened

    def _walk(self, value: Any, change: Any, secret: bool = False) -> Any:
        if isinstance(value, Mapping):
            return {k: self._walk(v, change, secret or is_secret_key(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, change, secret) for v in value]
        if isinstance(value, str) and (secret or is_sealed(value)):
            return change(value)
        return value

    # -- values ------------------------------------------------------------------------------

    def _seal_value(self, value: str) -> str:
        if is_sealed(value):
            return value
        token = self._key(create=True).encrypt(value.encode())
        return SEALED_PREFIX + token.decode("ascii")

    def _open_value(self, value: str, what: str) -> str:
        if not is_sealed(value):
            return value  # written before sealing, or by a store without a key
        if self.key_file is None:
            raise StoreError(
                f"{what} has sealed secrets and this store was opened without a key",
                hint="open it with the host's [DEFAULT] secret_key_file "
                "(Store(url, secret_key_file=...))",
            )
        try:
            plain = self._key(create=False).decrypt(value[len(SEALED_PREFIX):].encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise StoreError(
                f"{what} is sealed with a key other than the one in {self.key_file}",
                hint=_KEY_HINT,
            ) from None
        secret = plain.decode()
        remember(secret)  # scrubbed from any error text that echoes it
        return secret

    # -- the key file ------------------------------------------------------------------------

    def _key(self, *, create: bool) -> Fernet:
        with self._lock:
            if self._fernet is None:
                assert self.key_file is not None
                self._fernet = Fernet(read_key_file(self.key_file, create=create))
            return self._fernet


def read_key_file(path: Path, *, create: bool) -> bytes:
    """The Fernet key in `path`; with `create`, a new key written there 0600 if it is missing
    (atomically: concurrent creators end up with the same key). StoreError naming the file
    when it is missing, unreadable or not a key."""
    if create and not path.exists():
        _create_key_file(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes().strip()
    except FileNotFoundError:
        raise StoreError(f"secret key file {path} does not exist, so the sealed secrets in "
                         "the store cannot be opened", hint=_KEY_HINT) from None
    except OSError as exc:
        raise StoreError(f"cannot read secret key file {path}: {exc.strerror or exc}",
                         hint="it must be readable by the user virtkit runs as") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        LOG.warning("secret key file %s is readable by others (mode %o): chmod 600 it",
                    path, stat.S_IMODE(mode))
    try:
        if len(base64.urlsafe_b64decode(data)) != 32:
            raise ValueError
    except ValueError:
        raise StoreError(f"secret key file {path} does not hold a Fernet key",
                         hint="restore it from the host that created it") from None
    return data


def _create_key_file(path: Path) -> None:
    """A new key in `path`, written to a 0600 file beside it, then linked into place."""
    if not path.parent.is_dir():
        raise StoreError(f"cannot create secret key file {path}: "
                         f"directory {path.parent} does not exist",
                         hint="create it, or set [DEFAULT] secret_key_file elsewhere")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # fails if another process made it first: theirs wins
            LOG.info("created secret key file %s", path)
        except FileExistsError:
            pass
    except OSError as exc:
        raise StoreError(f"cannot create secret key file {path}: {exc.strerror or exc}",
                         hint="set [DEFAULT] secret_key_file to a path this user can "
                         "write") from None
    finally:
        temp.unlink(missing_ok=True)
