"""The simulated guest's commands (run by zlogin inside a zone's root) and password checks.

Paths are inside the zone root; writes replace files (a temporary file, then rename), so a
file shared with the image's snapshot (a hard link) is never written through.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

HASH_ID = "pbkdf2-sha256"
ITERATIONS = 2000


class GuestError(Exception):
    """A guest command's failure: message for stderr, exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def resolve(root: str | os.PathLike[str], path: str) -> Path:
    """A guest path inside the zone root (never outside it, symlinks included)."""
    if not path.startswith("/"):
        raise GuestError(f"{path}: relative paths are not supported here", 2)
    base = Path(root).resolve()
    target = (base / path.lstrip("/")).resolve()
    if target != base and base not in target.parents:
        raise GuestError(f"{path}: outside the zone", 1)
    return target


def replace_file(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file by rename (breaks any hard link to the image's copy)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted hash for /etc/shadow."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    enc = base64.b64encode
    return f"${HASH_ID}${ITERATIONS}${enc(salt).decode()}${enc(digest).decode()}"


def _verify(stored: str, password: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != HASH_ID:
        return False
    salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(got, want)


def password_matches(zone_root: str | os.PathLike[str], user: str, password: str) -> bool:
    """Whether `password` is `user`'s password in the zone's /etc/shadow."""
    try:
        lines = (Path(zone_root) / "etc" / "shadow").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        fields = line.split(":")
        if fields[0] == user and len(fields) > 1:
            return _verify(fields[1], password)
    return False


def chpasswd(root: str, args: list[str], stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """`user:password` lines on stdin; each user must have a shadow entry."""
    shadow = resolve(root, "/etc/shadow")
    try:
        lines = shadow.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GuestError("chpasswd: cannot open /etc/shadow") from None
    for raw in stdin.read().decode("utf-8", "replace").splitlines():
        if not raw:
            continue
        user, sep, password = raw.partition(":")
        if not sep:
            raise GuestError("chpasswd: missing ':' in input line")
        hits = [i for i, line in enumerate(lines) if line.split(":")[0] == user]
        if not hits:
            raise GuestError(f"chpasswd: unknown user {user}")
        fields = lines[hits[0]].split(":")
        fields[1] = hash_password(password)
        lines[hits[0]] = ":".join(fields)
    replace_file(shadow, ("\n".join(lines) + "\n").encode(), 0o600)
    return 0


def mkdir(root: str, args: list[str], stdin: IO[bytes], stdout: IO[bytes]) -> int:
    parents = "-p" in args
    paths = [a for a in args if a != "-p"]
    if not paths:
        raise GuestError("usage: mkdir [-p] dir ...", 2)
    for path in paths:
        target = resolve(root, path)
        try:
            target.mkdir(parents=parents, exist_ok=parents)
        except FileExistsError:
            raise GuestError(f"mkdir: cannot create directory '{path}': File exists") from None
        except FileNotFoundError:
            raise GuestError(f"mkdir: cannot create directory '{path}': "
                             "No such file or directory") from None
    return 0


def tee(root: str, args: list[str], stdin: IO[bytes], stdout: IO[bytes]) -> int:
    append = "-a" in args
    paths = [a for a in args if a != "-a"]
    data = stdin.read()
    for path in paths:
        target = resolve(root, path)
        if not target.parent.is_dir():
            raise GuestError(f"tee: {path}: No such file or directory")
        old = target.read_bytes() if append and target.exists() else b""
        replace_file(target, old + data)
    stdout.write(data)
    return 0


def cat(root: str, args: list[str], stdin: IO[bytes], stdout: IO[bytes]) -> int:
    if not args:
        stdout.write(stdin.read())
        return 0
    for path in args:
        target = resolve(root, path)
        try:
            stdout.write(target.read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise GuestError(f"cat: {path}: No such file or directory") from None
    return 0


Command = Callable[[str, list[str], IO[bytes], IO[bytes]], int]
COMMANDS: dict[str, Command] = {
    "/usr/sbin/chpasswd": chpasswd, "/usr/bin/mkdir": mkdir, "/usr/bin/tee": tee,
    "/usr/bin/cat": cat,
}
for _path, _fn in list(COMMANDS.items()):
    COMMANDS[os.path.basename(_path)] = _fn
    COMMANDS["/bin/" + os.path.basename(_path)] = _fn


def run(root: str, argv: list[str], stdin: IO[bytes], stdout: IO[bytes],
        stderr: IO[bytes]) -> int:
    """Run one guest command in the zone root; its exit status (127: no such command)."""
    command = COMMANDS.get(argv[0])
    if command is None:
        stderr.write(f"{argv[0]}: not found\n".encode())
        return 127
    try:
        return command(root, argv[1:], stdin, stdout)
    except GuestError as exc:
        stderr.write(f"{exc}\n".encode())
        return exc.status
