"""One way to turn an engine's errors into virtkit's.

A driver describes its engine's exceptions once, in a `classify` function that says what
kind of failure each one is (`EngineFault`); `EngineErrors` builds the virtkit error from
that, the same way for every driver. A lost connection and a permission problem are kept
apart: the first is HypervisorUnavailable (the engine's state is unknown, virtkit
reconnects), the second AccessDenied (the engine is there and refuses; the message says
what it cannot reach, as whom, and how to fix it).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from virt.errors import (
    AccessDenied,
    HypervisorUnavailable,
    InstanceExists,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    UnsupportedOperation,
    VirtError,
)


class FaultKind(enum.Enum):
    NOT_FOUND = "not found"  # the instance (or the object the call names) does not exist
    EXISTS = "exists"  # the instance already exists
    INVALID_STATE = "invalid state"  # not allowed in the guest's current state
    INVALID_REQUEST = "invalid request"  # the engine refused the arguments
    UNSUPPORTED = "unsupported"  # the engine cannot do this at all
    ACCESS_DENIED = "access denied"  # the engine (or its user) may not read or write something
    UNAVAILABLE = "unavailable"  # the engine cannot be reached or did not answer in time
    FAILED = "failed"  # anything else the engine reports


@dataclass(frozen=True)
class EngineFault:
    """What an engine exception means: its kind, the engine's own words, and a hint."""

    kind: FaultKind
    detail: str
    hint: str | None = None


Classify = Callable[[BaseException], "EngineFault | None"]


class EngineErrors:
    """Translates the exceptions of one engine (`engine`, e.g. 'libvirt') with `classify`.

    `classify` returns None for exceptions that are not the engine's: those propagate
    unchanged, as do virtkit's own errors.
    """

    def __init__(self, engine: str, classify: Classify) -> None:
        self.engine = engine
        self._classify = classify

    def error(self, exc: BaseException, what: str, *,
              instance: str | None = None) -> VirtError | None:
        """The virtkit error for `exc` raised while trying to `what` (reads after 'could
        not'); None if `exc` is not the engine's."""
        if isinstance(exc, VirtError):
            return exc
        fault = self._classify(exc)
        if fault is None:
            return None
        return self._build(fault, what, instance)

    @contextlib.contextmanager
    def translate(self, what: str, *, instance: str | None = None) -> Iterator[None]:
        """Raise the virtkit error of any engine exception raised inside."""
        try:
            yield
        except VirtError:
            raise
        except Exception as exc:
            error = self.error(exc, what, instance=instance)
            if error is None:
                raise
            raise error from None

    def _build(self, fault: EngineFault, what: str, instance: str | None) -> VirtError:
        subject = f" ({instance})" if instance and fault.kind is not FaultKind.NOT_FOUND else ""
        message = f"{self.engine} could not {what}{subject}: {fault.detail}"
        kind = fault.kind
        if kind is FaultKind.NOT_FOUND and instance is not None:
            return InstanceNotFound(instance, hint=fault.hint)
        if kind is FaultKind.EXISTS and instance is not None:
            return InstanceExists(instance, hint=fault.hint)
        if kind is FaultKind.UNSUPPORTED:
            return UnsupportedOperation(self.engine, what, reason=fault.detail)
        error_class: type[VirtError] = _ERROR_OF.get(kind, VirtError)
        return error_class(message, hint=fault.hint)


_ERROR_OF: dict[FaultKind, type[VirtError]] = {
    FaultKind.INVALID_STATE: InvalidState,
    FaultKind.INVALID_REQUEST: InvalidRequest,
    FaultKind.ACCESS_DENIED: AccessDenied,
    FaultKind.UNAVAILABLE: HypervisorUnavailable,
}
