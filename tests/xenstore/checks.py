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


def assert_crypt_matches(hashed: str, password: str) -> None:
    """Verify a $6$ hash with crypt(3) and with `openssl passwd -6` (password on stdin)."""
    assert hashed.startswith("$6$")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    assert crypt.crypt(password, hashed) == hashed
    assert crypt.crypt(password + "x", hashed) != hashed
    salt = hashed.split("$")[2]
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password.encode() + b"\n",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.decode().strip() == hashed
