"""`AgentClient`: one guest's agent over a channel; requests, readiness and the operations."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from oslo_config import cfg

from guest_agent import protocol as p
from virt.agent.channel import Channel
from virt.agent.failures import reply_error
from virt.agent.options import GROUP, register_opts
from virt.agent.passwords import set_password_legacy, set_password_v2
from virt.errors import (
    AgentAbsent,
    AgentError,
    AgentNotReady,
    AgentUnsupportedCommand,
    InvalidRequest,
)

LOG = logging.getLogger(__name__)


class AgentClient:
    """Talks to one guest's agent over a channel."""

    def __init__(
        self,
        channel: Channel,
        *,
        timeout: float = 30.0,
        version_timeout: float = 300.0,
        resetnetwork_timeout: float = 60.0,
        allow_legacy: bool = False,
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self.version_timeout = version_timeout
        self.resetnetwork_timeout = resetnetwork_timeout
        self.allow_legacy = allow_legacy
        self._features: frozenset[str] | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, channel: Channel) -> AgentClient:
        """A client with the `[agent]` options of `conf` (registered if need be)."""
        register_opts(conf)
        group = conf[GROUP]
        return cls(
            channel,
            timeout=group.timeout,
            version_timeout=group.version_timeout,
            resetnetwork_timeout=group.resetnetwork_timeout,
            allow_legacy=group.allow_legacy,
        )

    # -- requests ----------------------------------------------------------------------------

    def call(
        self,
        name: str,
        value: Any = "",
        *,
        version: int = 1,
        timeout: float | None = None,
        request_id: str | None = None,
        success: Sequence[str] = (p.RC_OK,),
    ) -> p.Reply:
        """Send one command and return its successful reply; failures raise AgentError kinds."""
        reply = self.exchange(name, value, version=version, timeout=timeout, request_id=request_id)
        if reply.error is None and reply.returncode in success:
            return reply
        raise reply_error(name, reply)

    def exchange(
        self,
        name: str,
        value: Any = "",
        *,
        version: int = 1,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> p.Reply:
        """Send one command and return the agent's well-formed reply, whatever its code.

        AgentNotReady when no reply came in time, AgentError when the reply is malformed.
        """
        request_id = request_id or str(uuid.uuid4())
        text = p.Request(request_id, name, value, version).to_json()
        if len(text.encode()) > self.channel.max_request_bytes:
            raise InvalidRequest(
                f"the {name} request is {len(text.encode())} bytes; the agent channel takes at most "
                f"{self.channel.max_request_bytes}",
                hint="send a smaller file (xenstore values are limited to about 2 KiB)",
            )
        limit = self.timeout if timeout is None else timeout
        try:
            self.channel.send(request_id, text)
            raw = self.channel.receive(request_id, limit)
        finally:
            self.channel.finish(request_id)
        if raw is None:
            raise AgentNotReady(
                f"the guest agent did not answer '{name}' within {limit:g}s",
                hint="the guest may be busy or booting; retry later",
            )
        try:
            reply = p.Reply.parse(raw)
        except p.ProtocolError as exc:
            raise AgentError(
                f"the guest agent's reply to '{name}' is malformed: {exc.message}"
            ) from None
        LOG.debug("agent request %s: %s -> %s", request_id, name, reply.returncode)
        return reply

    # -- readiness and negotiation -----------------------------------------------------------

    def wait_ready(self, budget: float | None = None) -> str:
        """Probe with 'version' until the agent answers; AgentAbsent after `budget` seconds.

        Any well-formed reply means an agent is there, whatever its code: agents without a
        `version` command (Mirantis answers "1") are present too. Returns the version, or ""
        when the agent answered without one.
        """
        budget = self.version_timeout if budget is None else budget
        deadline = time.monotonic() + budget
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentAbsent(
                    f"no guest agent answered within {budget:g}s",
                    hint="install and start virtkit-agent (or a compatible agent) in the guest",
                )
            try:
                reply = self.exchange(p.VERSION, "agent", timeout=min(self.timeout, remaining))
            except AgentNotReady:
                continue
            if not reply.ok:
                LOG.info(
                    "the guest agent answered 'version' with code %s: present, version unknown",
                    reply.returncode,
                )
            return reply.message if reply.ok else ""

    def version(self, *, timeout: float | None = None) -> str:
        """The agent's version (AgentUnsupportedCommand from agents without one)."""
        return self.call(p.VERSION, "agent", timeout=timeout).message

    def features(self) -> frozenset[str]:
        """The agent's command list, negotiated once.

        Any reply other than "0" (a typed error, the unix agent's "404", the Mirantis and
        Rackspace Windows agents' "1", a "500") means no features: the legacy commands only.
        No reply in time (AgentNotReady) or a malformed one (AgentError) still raises.
        """
        if self._features is None:
            reply = self.exchange(p.FEATURES, "")
            if reply.error is None and reply.returncode == p.RC_OK:
                message = reply.message
            else:
                LOG.info(
                    "the guest agent answered 'features' with code %s: legacy commands only",
                    reply.returncode,
                )
                message = ""
            self._features = p.parse_features(message)
        return self._features

    def supports_v2(self) -> bool:
        """Whether the agent offers the v2 codec."""
        return p.FEATURE_V2 in self.features()

    # -- operations --------------------------------------------------------------------------

    def set_admin_password(self, password: str) -> str:
        """Set the guest's admin password; returns the codec used ('v2' or 'legacy')."""
        if not isinstance(password, str) or not p.password_acceptable(password):
            raise InvalidRequest("the password must be a string without CR, LF or NUL")
        if self.supports_v2():
            set_password_v2(self, password)
            return "v2"
        if not self.allow_legacy:
            raise AgentUnsupportedCommand(
                "the guest agent offers only the legacy password exchange, which is refused",
                hint="upgrade the guest agent to one with v2, or set [agent] allow_legacy = true "
                "(the legacy exchange is breakable by anyone who sees it)",
            )
        LOG.warning("using the legacy (weak) password exchange: the guest agent does not offer v2")
        set_password_legacy(self, password)
        return "legacy"

    def inject_file(self, path: str, contents: bytes) -> None:
        """Write a file in the guest (the agent confines it to its allowed directories)."""
        v2 = self.supports_v2()
        if not path.startswith("/") or ("," in path and not v2):
            raise InvalidRequest(
                f"cannot inject {path!r}: the path must be absolute (and comma-free for legacy agents)"
            )
        version = 2 if v2 else 1
        self.call(
            p.INJECTFILE, p.injectfile_value(path, contents, version=version), version=version
        )

    def reset_network(
        self, *, networks: Sequence[Mapping[str, Any]] | None = None, hostname: str | None = None
    ) -> None:
        """Make the agent rewrite the guest's network configuration.

        Without `networks` the agent reads vm-data/networking (Xen); with them (virtio-serial)
        the data travels in the request.
        """
        if self.supports_v2():
            value: Any = (
                "" if networks is None else {"networks": list(networks), "hostname": hostname}
            )
            self.call(p.RESETNETWORK, value, version=2, timeout=self.resetnetwork_timeout)
        else:  # old FreeBSD/Gentoo agents answer 500 on success (Nova bug 1223818)
            self.call(
                p.RESETNETWORK, "", timeout=self.resetnetwork_timeout, success=(p.RC_OK, "500")
            )
