"""A driver proxy whose every call is bounded in time, so a hung engine fails a test
instead of hanging the whole suite."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from virt.driver import ComputeDriver


class OperationTimeout(AssertionError):
    """A driver call did not return within the suite's operation_timeout."""


class BoundedDriver:
    """Proxy to `driver` running each public method on a daemon thread with a deadline."""

    def __init__(self, driver: ComputeDriver, timeout: float) -> None:
        self.raw = driver
        self.timeout = timeout

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return functools.partial(self._call, name, attr)

    def _call(
        self, name: str, method: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = method(*args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc

        # A daemon thread: a call stuck in the engine cannot keep the test run alive.
        worker = threading.Thread(target=run, name=f"conformance-{name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise OperationTimeout(
                f"{type(self.raw).__name__}.{name} did not return within {self.timeout:g}s "
                "([conformance] operation_timeout)"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")
