"""Platform password setters. The password never goes on a command line or into a log."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Protocol

from guest_agent.config import AgentConfig

TIMEOUT = 30.0


class SetterError(Exception):
    """The operating system refused the new password (message holds no secret)."""


class PasswordSetter(Protocol):
    def set_password(self, user: str, password: str) -> None: ...


class ChpasswdSetter:
    """`chpasswd` with `user:password` on stdin (optionally -R CHROOT, -c METHOD)."""

    def __init__(
        self, chpasswd: str = "chpasswd", *, root: str = "", crypt_method: str = ""
    ) -> None:
        self.argv = [chpasswd]
        if root:
            self.argv += ["-R", root]
        if crypt_method:
            self.argv += ["-c", crypt_method]

    def set_password(self, user: str, password: str) -> None:
        try:
            result = subprocess.run(
                self.argv,
                input=f"{user}:{password}\n".encode(),
                capture_output=True,
                timeout=TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetterError(f"cannot run {self.argv[0]}: {type(exc).__name__}") from None
        if result.returncode != 0:
            # chpasswd's stderr names the user and the failing step, never the password.
            detail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise SetterError(f"chpasswd exited with {result.returncode}: {detail[0][:200]}")


def sha512_crypt(password: str) -> str:
    """A SHA-512 crypt(3) hash ($6$) with a fresh salt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13; openssl below takes over there

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    except ImportError:
        pass
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SetterError("no SHA-512 crypt available (neither the crypt module nor openssl)")
    result = subprocess.run(
        [openssl, "passwd", "-6", "-stdin"],
        input=password.encode() + b"\n",
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise SetterError("openssl passwd -6 failed")
    return result.stdout.decode().strip()


class ShadowFileSetter:
    """Rewrite the user's hash in a shadow file atomically (temp file, fsync, rename)."""

    def __init__(self, path: str = "/etc/shadow") -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The lock file shadow-utils' lckpwdf() uses, next to the file.
        import fcntl  # POSIX only; this setter is never chosen on Windows

        lock = os.path.join(os.path.dirname(self.path) or ".", ".pwd.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def set_password(self, user: str, password: str) -> None:
        hashed = sha512_crypt(password)
        with self._locked():
            try:
                with open(self.path, encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
                info = os.stat(self.path)
            except OSError as exc:
                raise SetterError(f"cannot read {self.path}: {exc.strerror}") from None
            for index, line in enumerate(lines):
                fields = line.split(":")
                if fields[0] == user and len(fields) >= 3:
                    fields[1] = hashed
                    fields[2] = str(int(time.time() // 86400))
                    lines[index] = ":".join(fields)
                    break
            else:
                raise SetterError(f"user {user!r} is not in {self.path}")
            self._replace("\n".join(lines) + "\n", info)

    def _replace(self, text: str, info: os.stat_result) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".shadow.")
        try:
            os.fchmod(fd, info.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(fd, info.st_uid, info.st_gid)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class WindowsSetter:
    """NetUserSetInfo level 1003 through pywin32: an API call, never `net user` argv."""

    def set_password(self, user: str, password: str) -> None:
        try:
            import win32net  # type: ignore[import-not-found]  # only on Windows guests
        except ImportError:
            raise SetterError("pywin32 (win32net) is not installed") from None
        try:
            win32net.NetUserSetInfo(None, user, 1003, {"password": password})
        except Exception as exc:  # pywintypes.error: (code, function, text)
            code = getattr(exc, "winerror", None) or (exc.args[0] if exc.args else "?")
            raise SetterError(f"NetUserSetInfo failed with error {code}") from None


def make_setter(config: AgentConfig) -> PasswordSetter:
    """The setter the configuration names; `auto` picks the platform's."""
    method = config.password_method
    if method == "auto":
        method = "windows" if sys.platform == "win32" else "chpasswd"
    if method == "windows":
        return WindowsSetter()
    if method == "shadow":
        return ShadowFileSetter(config.shadow_path)
    return ChpasswdSetter(
        config.chpasswd_path, root=config.chpasswd_root, crypt_method=config.crypt_method
    )
