"""What carries the agent's requests and replies: the `Channel` interface."""

from __future__ import annotations

import abc

from guest_agent import protocol as p


class Channel(abc.ABC):
    """Carries request and reply texts between the host and one guest's agent."""

    #: Largest request text the channel can carry (the xenstore per-value quota for Xen).
    max_request_bytes: int = p.MAX_VALUE_BYTES

    @abc.abstractmethod
    def send(self, request_id: str, request: str) -> None:
        """Post a request; raises AgentGuestRebooted when the guest is gone."""

    @abc.abstractmethod
    def receive(self, request_id: str, timeout: float) -> str | None:
        """The reply text, or None after `timeout`; AgentGuestRebooted when the guest went away."""

    @abc.abstractmethod
    def finish(self, request_id: str) -> None:
        """Remove whatever is left of this request and its reply."""
