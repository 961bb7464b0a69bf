"""Is the failed host fenced? Recovering an instance that still runs elsewhere corrupts disks."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable

from virt.errors import NotFenced


def check_fenced(
    host: str,
    *,
    confirm: bool = False,
    command: str = "",
    timeout: float = 60.0,
    host_status: Callable[[str], str | None] | None = None,
    dry_run: bool = False,
) -> str:
    """Say how we know `host` is fenced, or raise NotFenced (a dry run reports instead)."""
    if confirm:
        return "confirmed by the operator (--confirm-fenced)"
    reasons = []
    if command:
        ok, why = run_fence_command(command, host, timeout)
        if ok:
            return why
        reasons.append(why)
    if host_status is not None:
        status = host_status(host)
        if status == "fenced":
            return "the state store marks the host fenced"
        reasons.append(f"the state store says the host is {status or 'unknown'}")
    if not command:
        reasons.append("no [recovery] fence_check_command is configured")
    message = f"host {host} is not known to be fenced: {'; '.join(reasons)}"
    if dry_run:
        return f"NOT FENCED ({message}); a real run would refuse"
    raise NotFenced(message, hint="power it off, then pass --confirm-fenced (or configure "
                    "[recovery] fence_check_command)")


def run_fence_command(command: str, host: str, timeout: float) -> tuple[bool, str]:
    """Run the fence check with the host as its last argument; exit 0 means fenced."""
    try:
        argv = shlex.split(command) + [host]
    except ValueError as exc:
        return False, f"fence_check_command cannot be parsed: {exc}"
    env = dict(os.environ, VIRTKIT_FAILED_HOST=host)
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"fence check {argv[0]} did not answer within {timeout:g}s"
    except OSError as exc:
        return False, f"fence check {argv[0]} cannot run: {exc.strerror}"
    if done.returncode == 0:
        return True, f"fence check {argv[0]} says fenced"
    tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
    return False, f"fence check {argv[0]} exited {done.returncode}" + (f" ({tail})" if tail else "")
