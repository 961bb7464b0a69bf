"""Container states -> PowerState, and state changes -> lifecycle transitions. No docker calls."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from virt.events import Transition
from virt.model import PowerState

# Exit codes of a process ended by a stop: itself (0), SIGTERM (143) or SIGKILL (137).
# Anything else, an OOM kill or a daemon error, means the container crashed.
CLEAN_EXIT_CODES = frozenset({0, 128 + 15, 128 + 9})

_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")

ON_STATES = frozenset({PowerState.RUNNING, PowerState.PAUSED})


def exit_state(exit_code: int, oom_killed: bool = False, error: str = "") -> PowerState:
    """SHUTDOWN for a stop, CRASHED for a crash or an OOM kill."""
    if oom_killed or error or exit_code not in CLEAN_EXIT_CODES:
        return PowerState.CRASHED
    return PowerState.SHUTDOWN


def from_inspect(state: Mapping[str, Any]) -> PowerState:
    """PowerState from the `State` object of `docker inspect`."""
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
        )
    if status == "dead":
        return PowerState.CRASHED
    return PowerState.NOSTATE


def from_list_entry(entry: Mapping[str, Any]) -> PowerState:
    """PowerState from one entry of the container list (`State` + human `Status`)."""
    state = str(entry.get("State", ""))
    if state == "exited":
        match = _EXITED_RE.match(str(entry.get("Status", "")))
        return exit_state(int(match.group(1)) if match else 0)
    return from_inspect({"Status": state})


def transition(old: PowerState | None, new: PowerState | None) -> Transition | None:
    """The lifecycle event for a change from `old` to `new` (None: absent), if any."""
    if old == new:
        return None
    if new is PowerState.RUNNING:
        return Transition.RESUMED if old is PowerState.PAUSED else Transition.STARTED
    if new is PowerState.PAUSED:
        return Transition.PAUSED
    if new is PowerState.CRASHED:
        return Transition.CRASHED
    if old in ON_STATES:
        return Transition.STOPPED
    return None


def diff(
    old: Mapping[str, PowerState], new: Mapping[str, PowerState]
) -> list[tuple[str, Transition]]:
    """Transitions that turn the state map `old` into `new`, keyed by instance uuid."""
    changes = []
    for uuid in sorted(set(old) | set(new)):
        change = transition(old.get(uuid), new.get(uuid))
        if change is not None:
            changes.append((uuid, change))
    return changes
