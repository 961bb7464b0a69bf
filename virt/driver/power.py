"""Power mechanics every driver shares: timeout checks, graceful power-off, state guards."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from virt.errors import InvalidRequest, InvalidState
from virt.model import PowerOffResult, PowerState

#: Smallest pause between soft shutdown requests, whatever `retry_interval` says.
MIN_RETRY_INTERVAL = 0.1
#: How often `poll_until` looks, for engines without a blocking wait.
POLL_INTERVAL = 0.1


def check_timeout(value: float, name: str = "timeout") -> float:
    """`value` as seconds, or InvalidRequest if it is negative or not a finite number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def poll_until(done: Callable[[], bool], seconds: float, interval: float = POLL_INTERVAL) -> bool:
    """Call `done` until it is true or `seconds` have passed; whether it became true."""
    deadline = time.monotonic() + seconds
    while True:
        if done():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))


def graceful_power_off(
    *,
    timeout: float,
    retry_interval: float,
    is_off: Callable[[], bool],
    request_stop: Callable[[], None],
    wait_off: Callable[[float], bool],
    force_off: Callable[[], bool],
) -> PowerOffResult:
    """Ask the guest to stop every `retry_interval` seconds; force it after `timeout`.

    `request_stop` sends the engine's soft signal (ACPI, SIGTERM, ...); `wait_off(s)` waits
    up to `s` seconds and says whether the guest stopped; `force_off` stops it hard and
    returns False if it had stopped by itself meanwhile (then the stop counts as clean).
    A timeout of 0 forces at once.
    """
    timeout = check_timeout(timeout)
    retry_interval = check_timeout(retry_interval, "retry_interval")
    began = time.monotonic()
    if is_off():
        return PowerOffResult(clean=True, forced=False, duration_s=0.0, already_off=True)
    deadline = began + timeout
    while (left := deadline - time.monotonic()) > 0:
        request_stop()
        if wait_off(min(max(retry_interval, MIN_RETRY_INTERVAL), left)):
            return _result(began, forced=False)
    return _result(began, forced=force_off())


def reboot_grace(timeout: float, configured: float) -> float:
    """Seconds a soft reboot waits for the guest to stop: the caller's bound, at most the
    driver's `reboot_timeout` option."""
    return min(check_timeout(timeout), configured)


def _result(began: float, *, forced: bool) -> PowerOffResult:
    return PowerOffResult(clean=not forced, forced=forced,
                          duration_s=round(time.monotonic() - began, 3))


# -- state guards: True means "do it", False means "already so: a no-op" ---------------------

_ON = (PowerState.RUNNING, PowerState.PAUSED)


def _refuse(operation: str, ident: str, state: PowerState, wanted: str,
            hint: str | None = None) -> InvalidState:
    return InvalidState(f"cannot {operation} instance {ident}: it is {state.value}; "
                        f"{operation} needs it {wanted}", hint=hint)


def should_power_on(state: PowerState, ident: str) -> bool:
    """power_on: a running guest is a no-op; a paused one is refused (unpause it)."""
    if state is PowerState.RUNNING:
        return False
    if state is PowerState.PAUSED:
        raise InvalidState(f"instance {ident} is paused", hint="unpause it instead")
    return True


def should_pause(state: PowerState, ident: str) -> bool:
    """pause: a paused guest is a no-op; only a running one can be paused."""
    if state is PowerState.PAUSED:
        return False
    if state is not PowerState.RUNNING:
        raise _refuse("pause", ident, state, "running")
    return True


def should_unpause(state: PowerState, ident: str) -> bool:
    """unpause: a running guest is a no-op; only a paused one can be unpaused."""
    if state is PowerState.RUNNING:
        return False
    if state is not PowerState.PAUSED:
        raise _refuse("unpause", ident, state, "paused")
    return True


def should_suspend(state: PowerState, ident: str) -> bool:
    """suspend: a suspended guest is a no-op; only a running or paused one can be suspended."""
    if state is PowerState.SUSPENDED:
        return False
    if state not in _ON:
        raise _refuse("suspend", ident, state, "running or paused")
    return True


def should_resume(state: PowerState, ident: str) -> bool:
    """resume: a running guest is a no-op; only a suspended one can be resumed."""
    if state is PowerState.RUNNING:
        return False
    if state is not PowerState.SUSPENDED:
        raise _refuse("resume", ident, state, "suspended")
    return True


def require_running(state: PowerState, ident: str, operation: str, *,
                    hint: str = "start it first") -> None:
    """InvalidState unless the guest is running; `operation` is a noun ("soft reboot")."""
    if state is not PowerState.RUNNING:
        raise _refuse(operation, ident, state, "running", hint=hint)
