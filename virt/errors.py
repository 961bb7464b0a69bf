"""One exception hierarchy for virtkit.

Every error carries a message for people, an optional hint saying what to do, and the
exit code the CLI uses for it: 1 operation failed, 2 usage/config error, 3 not found,
4 unsupported operation.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNSUPPORTED = 4


class VirtError(Exception):
    """Base of every virtkit error."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InvalidRequest(VirtError):
    """The caller asked for something malformed (bad model values, bad arguments)."""

    exit_code = EXIT_USAGE


class ConfigError(VirtError):
    """The configuration is missing or wrong."""

    exit_code = EXIT_USAGE


class DriverLoadError(VirtError):
    """A compute driver could not be found or imported."""

    exit_code = EXIT_USAGE


class HypervisorUnavailable(VirtError):
    """The engine cannot be reached; its state is unknown (never read it as 'no instances')."""


class AccessDenied(VirtError):
    """The engine is reachable but may not read or write what it needs (a file, a device,
    a socket): a permission problem, never to be read as a lost connection."""


class InstanceNotFound(VirtError):
    exit_code = EXIT_NOT_FOUND

    def __init__(self, instance: str, *, hint: str | None = None) -> None:
        super().__init__(f"instance {instance} not found", hint=hint)
        self.instance = instance


class InstanceExists(VirtError):
    def __init__(self, instance: str, *, hint: str | None = None) -> None:
        super().__init__(f"instance {instance} already exists", hint=hint)
        self.instance = instance


class InstanceMoved(VirtError):
    """The instance is no longer on the host it was to be recovered from."""

    def __init__(self, instance: str, where: str | None) -> None:
        super().__init__(f"instance {instance} is on {where or 'no host'} now, not on the "
                         "failed host: another recoverer or Nova took it")
        self.instance = instance


class InstanceNotRunning(VirtError):
    def __init__(self, instance: str, operation: str) -> None:
        super().__init__(f"instance {instance} must exist and be running for {operation}")
        self.instance = instance


class InvalidState(VirtError):
    """The operation is not allowed in the instance's current state."""


class UnsupportedOperation(VirtError):
    exit_code = EXIT_UNSUPPORTED

    def __init__(self, driver: str, operation: str, *, reason: str | None = None) -> None:
        text = f"driver '{driver}' does not support {operation}"
        if reason:
            text += f": {reason}"
        super().__init__(text)
        self.driver = driver
        self.operation = operation


class StoreError(VirtError):
    """The state store cannot be opened, migrated or written."""


class SpawnError(VirtError):
    """Spawning failed; the driver has removed whatever it had created."""


class ImageNotFound(VirtError):
    exit_code = EXIT_NOT_FOUND


class ImageError(VirtError):
    """The image exists but cannot be used (corrupt, wrong format, pull failed)."""


class VolumeError(VirtError):
    """A volume could not be connected, attached or detached."""


class VolumeNotFound(VolumeError):
    exit_code = EXIT_NOT_FOUND


class VolumeAuthError(VolumeError):
    """The storage target refused our credentials (e.g. a wrong CHAP secret)."""


class VolumeUnreachable(VolumeError):
    """The storage portal could not be reached."""


class AgentError(VirtError):
    """Base for guest-agent failures."""


class AgentAbsent(AgentError):
    """No agent answered at all within the readiness budget."""


class AgentNotReady(AgentError):
    """The agent is there but did not answer this request in time."""


class AgentUnsupportedCommand(AgentError):
    exit_code = EXIT_UNSUPPORTED


class AgentDecryptionFailed(AgentError):
    """The guest could not decrypt what we sent (key exchange or codec mismatch)."""


class AgentGuestRebooted(AgentError):
    """The guest rebooted while a request was pending."""


class RecoveryError(VirtError):
    """A recovery step failed."""


class NotFenced(RecoveryError):
    """The failed host is not known to be fenced; recovering now risks two copies running."""

    exit_code = EXIT_USAGE
