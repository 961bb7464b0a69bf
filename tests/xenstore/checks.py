"""Checks shared by the agent tests: a guest's shadow hash, verified with real crypt tools."""

from __future__ import annotations

import subprocess
import warnings


def shadow_hash(agent_config, user="admin") -> str:
    with open(agent_config.shadow_path) as handle:
        for line in handle:
            fields = line.split(":")
            if fields[0] == user:
                return fields[1]
    raise AssertionError(f"{user} not in shadow")


def openssl_crypt(password: str, hashed: str) -> str:
    """`openssl passwd -6` with the salt of `hashed`; the password goes on stdin, never argv."""
    salt = hashed.split("$")[2]
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password.encode() + b"\n",
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout.decode().strip()


def _crypt(password: str, hashed: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13
    except ImportError:
        return openssl_crypt(password, hashed)
    return crypt.crypt(password, hashed)


def assert_crypt_matches(hashed: str, password: str) -> None:
    """Verify a $6$ hash with crypt(3) (openssl where Python has no crypt) and with
    `openssl passwd -6`."""
    assert hashed.startswith("$6$")
    assert _crypt(password, hashed) == hashed
    assert _crypt(password + "x", hashed) != hashed
    assert openssl_crypt(password, hashed) == hashed
