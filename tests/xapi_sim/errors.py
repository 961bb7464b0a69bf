"""XAPI failures as the simulator raises them: `[CODE, param, ...]`, every item a string."""

from __future__ import annotations


class XapiError(Exception):
    """A XAPI failure; `details` is the ErrorDescription list sent on the wire."""

    def __init__(self, code: str, *params: object) -> None:
        self.details = [code, *(str(p) for p in params)]
        super().__init__(self.details)

    @property
    def code(self) -> str:
        return self.details[0]


def handle_invalid(cls: str, ref: str) -> XapiError:
    return XapiError("HANDLE_INVALID", cls, ref)


def bad_power_state(vm: str, expected: list[str], actual: str) -> XapiError:
    """VM_BAD_POWER_STATE [vm, expected (lower-case, comma-separated), actual (lower-case)]."""
    return XapiError("VM_BAD_POWER_STATE", vm, ",".join(s.lower() for s in expected), actual.lower())
