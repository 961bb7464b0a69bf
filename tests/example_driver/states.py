"""The engine's guest states as virtkit's PowerState. No engine calls."""

from __future__ import annotations

from tests.example_driver.engine import FROZEN, HALTED, RUNNING
from virt.model import PowerState

POWER_STATES = {
    RUNNING: PowerState.RUNNING,
    FROZEN: PowerState.PAUSED,
    HALTED: PowerState.SHUTDOWN,
}


def power_state(engine_state: str) -> PowerState:
    """The PowerState of an engine state; NOSTATE for one this driver does not know."""
    return POWER_STATES.get(engine_state, PowerState.NOSTATE)
