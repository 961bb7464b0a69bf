"""A failed reply as the `AgentError` kind that says what went wrong."""

from __future__ import annotations

from guest_agent import protocol as p
from virt.errors import AgentDecryptionFailed, AgentError, AgentUnsupportedCommand


def _unsupported(reply: p.Reply) -> bool:
    """Typed `unsupported`, or what deployed agents answer to a command they lack."""
    if reply.error is p.ErrorKind.UNSUPPORTED:
        return True
    lowered = reply.message[:200].lower()
    return reply.error is None and (
        reply.returncode == "404"
        or (reply.returncode == "1" and "not" in lowered and "support" in lowered)
    )


def _undecryptable(name: str, reply: p.Reply) -> bool:
    """Typed `decrypt-failed`, or the legacy agents' answer to a password they cannot read."""
    if reply.error is p.ErrorKind.DECRYPT_FAILED:
        return True
    return (
        reply.error is None
        and name == p.PASSWORD
        and "invalid password data" in reply.message[:200].lower()
    )


def reply_error(name: str, reply: p.Reply) -> AgentError:
    """The error for the failed reply to command `name` (its message cut to 200 characters)."""
    message = reply.message[:200]
    if _unsupported(reply):
        return AgentUnsupportedCommand(f"the guest agent does not support '{name}': {message}")
    if _undecryptable(name, reply):
        return AgentDecryptionFailed(
            f"the guest agent could not decrypt the '{name}' request: {message}",
            hint="the guest and host disagree on the key exchange; retry, or check the agent version",
        )
    kind = f" [{reply.error.value}]" if reply.error else ""
    return AgentError(
        f"the guest agent failed '{name}' with code {reply.returncode}{kind}: {message}"
    )
