"""Container states -> PowerState (what docker reports, read as virtkit reads a guest). No
docker calls; the generic state -> transition logic is the kit's (virt.driver.transitions)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from virt.model import PowerState

# Exit codes of a process that ended as asked: by itself (0) or on SIGTERM (143).
CLEAN_EXIT_CODES = frozenset({0, 128 + 15})
# SIGKILL (137) is clean only when virtkit itself forced the stop (power_off after its
# timeout, a reboot): docker does not record who sent a SIGKILL, so the driver keeps a
# record of its own forced stops (see drivers/docker/forced.py). A SIGKILL from
# anyone else (`docker kill`, the kernel's OOM killer, a daemon shutdown past its grace)
# means the container crashed, as does any other exit code or a daemon error.
KILLED_EXIT_CODE = 128 + 9

_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")


def exit_state(
    exit_code: int, oom_killed: bool = False, error: str = "", *, forced: bool = False
) -> PowerState:
    """SHUTDOWN for a stop, CRASHED for a crash or an OOM kill.

    `forced`: virtkit itself SIGKILLed this run of the container, so 137 is a stop.
    """
    if oom_killed or error:
        return PowerState.CRASHED
    if exit_code in CLEAN_EXIT_CODES or (forced and exit_code == KILLED_EXIT_CODE):
        return PowerState.SHUTDOWN
    return PowerState.CRASHED


def needs_inspect(state: str) -> bool:
    """Whether a container in list state `state` needs `inspect` to know its PowerState.

    The list call has no OOMKilled flag and no start time: an exited or dead container
    is inspected, so that listing (resync) and get_info read the same truth.
    """
    return state not in ("running", "restarting", "paused", "created")


def from_inspect(state: Mapping[str, Any], *, forced: bool = False) -> PowerState:
    """PowerState from the `State` object of `docker inspect`.

    `forced`: virtkit SIGKILLed the run described by `state` (see `exit_state`).
    """
    status = str(state.get("Status", ""))
    if state.get("Paused") or status == "paused":
        return PowerState.PAUSED
    if status in ("running", "restarting") or state.get("Running"):
        return PowerState.RUNNING
    if status == "created":
        return PowerState.SHUTDOWN
    if status == "exited":
        return exit_state(
            int(state.get("ExitCode") or 0),
            bool(state.get("OOMKilled")),
            str(state.get("Error") or ""),
            forced=forced,
        )
    if status == "dead":
        return PowerState.CRASHED
    return PowerState.NOSTATE


def from_list_entry(entry: Mapping[str, Any]) -> PowerState:
    """PowerState of a container that is not exited, from its container-list entry.

    An exited container's state needs `inspect` (see `needs_inspect`); this reads its list
    entry pessimistically (no OOM flag, no record of a forced stop) for callers that
    cannot inspect, e.g. a container removed between list and inspect.
    """
    state = str(entry.get("State", ""))
    if state == "exited":
        match = _EXITED_RE.match(str(entry.get("Status", "")))
        return exit_state(int(match.group(1)) if match else -1)
    return from_inspect({"Status": state})
