"""Host side of the guest-agent protocol: `AgentClient` over a `Channel`.

The client negotiates the v2 codec through `features` and falls back to the legacy
(Nova/Rackspace) exchange only when `[agent] allow_legacy` says so. Every request has a
fresh UUID, a bounded wait, and both its request and reply removed when done. Nothing secret
(password, ciphertext, public values) is logged or put in an error message.

Channels: `XenstoreChannel` (Xen: data/host/<id> → data/guest/<id> of a domain) and
`VirtioSerialChannel` (libvirt/KVM: JSON lines on the host end of a virtio-serial port). A
driver can plug its own by subclassing `Channel`.
"""

from __future__ import annotations

import abc
import base64
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from oslo_config import cfg

from guest_agent import protocol as p
from guest_agent.transports.xenstore import XenstoreClient, XenstoreError
from virt.config import register_group_opts
from virt.errors import (
    AgentAbsent,
    AgentDecryptionFailed,
    AgentError,
    AgentGuestRebooted,
    AgentNotReady,
    AgentUnsupportedCommand,
    InvalidRequest,
)

LOG = logging.getLogger(__name__)

GROUP = "agent"

AGENT_OPTS: list[cfg.Opt] = [
    cfg.FloatOpt(
        "timeout",
        default=30.0,
        min=0.1,
        help="Seconds to wait for the agent's reply to one request.",
    ),
    cfg.FloatOpt(
        "version_timeout",
        default=300.0,
        min=0.1,
        help="Readiness budget: seconds to keep probing the agent with 'version' before it is "
        "reported absent (a booting guest may reboot during configuration).",
    ),
    cfg.FloatOpt(
        "resetnetwork_timeout", default=60.0, min=0.1, help="Seconds to wait for 'resetnetwork'."
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.5,
        min=0.01,
        help="Seconds between checks for a reply when no watch event arrives.",
    ),
    cfg.BoolOpt(
        "allow_legacy",
        default=False,
        help="Allow the legacy password exchange (2^107-1 Diffie-Hellman, MD5 key derivation, "
        "unauthenticated AES-CBC) for guests whose agent does not offer v2. The legacy "
        "group is broken: anyone who sees the exchange can recover the password.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the [agent] option group."""
    register_group_opts(conf, GROUP, AGENT_OPTS)


# -- channels --------------------------------------------------------------------------------


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


#: How long the host keeps sweeping the late reply of a request it gave up on, and how many
#: such request ids it remembers per domain (legacy agents answer whenever they are done).
ABANDONED_TTL = 3600.0
ABANDONED_MAX = 1024

_abandoned_lock = threading.Lock()
#: (xenstore path, domid) -> request id -> monotonic expiry; shared by every channel of this
#: process, so a new channel object for the same domain sweeps what an earlier one abandoned.
_abandoned: dict[tuple[str, int], dict[str, float]] = {}


class XenstoreChannel(Channel):
    """`/local/domain/<domid>/data/host/<id>` → `.../data/guest/<id>`; watch plus polling.

    Each wait registers its watches under a token of its own and takes their events from a
    private queue of the (possibly shared) client, then unwatches: no event is left behind on
    the client and none can wake another request's wait.

    Late replies: when a request ends without its reply (timeout, reboot, error), `finish`
    removes both nodes, but a guest still working may write `data/guest/<id>` afterwards
    (deployed legacy agents never check). Such ids are remembered (for `ABANDONED_TTL`), and
    every later `send` to the domain removes the replies that have appeared for them.
    """

    def __init__(self, client: XenstoreClient, domid: int, *, poll_interval: float = 0.5) -> None:
        self.client = client
        self.domid = domid
        self.base = f"/local/domain/{domid}"
        self.poll_interval = poll_interval
        self._sent: set[str] = set()
        self._answered: set[str] = set()

    def _guest_present(self) -> bool:
        return self.client.exists(f"{self.base}/name")

    def _rebooted(self) -> AgentGuestRebooted:
        return AgentGuestRebooted(
            f"domain {self.domid} is gone (rebooted or destroyed) while an agent request was pending",
            hint="look up the guest's new domain id and retry",
        )

    @property
    def _domain_key(self) -> tuple[str, int]:
        return (self.client.path, self.domid)

    def abandoned(self) -> list[str]:
        """Request ids given up on whose late reply is still swept (for tests and debugging)."""
        now = time.monotonic()
        with _abandoned_lock:
            ids = _abandoned.get(self._domain_key)
            if ids is None:
                return []
            for rid in [rid for rid, expiry in ids.items() if expiry <= now]:
                del ids[rid]
            if not ids:
                del _abandoned[self._domain_key]
            return list(ids)

    def _abandon(self, request_id: str) -> None:
        with _abandoned_lock:
            ids = _abandoned.setdefault(self._domain_key, {})
            ids.pop(request_id, None)
            ids[request_id] = time.monotonic() + ABANDONED_TTL
            while len(ids) > ABANDONED_MAX:
                del ids[next(iter(ids))]

    def sweep_late_replies(self) -> int:
        """Remove `data/guest/<id>` for the request ids this process abandoned; returns how many."""
        pending = set(self.abandoned())
        if not pending:
            return 0
        try:
            present = set(self.client.directory(f"{self.base}/data/guest")) & pending
        except XenstoreError:
            return 0
        swept = 0
        for request_id in sorted(present):
            try:
                self.client.rm(f"{self.base}/data/guest/{request_id}")
            except XenstoreError as exc:
                LOG.warning(
                    "could not remove the late reply %s of domain %d: %s",
                    request_id,
                    self.domid,
                    exc.name,
                )
                continue
            swept += 1
            LOG.info("removed the late agent reply %s of domain %d", request_id, self.domid)
            with _abandoned_lock:
                _abandoned.get(self._domain_key, {}).pop(request_id, None)
        return swept

    def send(self, request_id: str, request: str) -> None:
        try:
            if not self._guest_present():
                raise self._rebooted()
            self.sweep_late_replies()
            self._sent.add(request_id)
            self.client.write(f"{self.base}/data/host/{request_id}", request)
        except XenstoreError as exc:
            raise AgentError(f"cannot write the agent request to xenstore: {exc}") from None

    def receive(self, request_id: str, timeout: float) -> str | None:
        reply_path = f"{self.base}/data/guest/{request_id}"
        name_path = f"{self.base}/name"
        token = f"virtkit-host/{request_id}"
        deadline = time.monotonic() + timeout
        events = self.client.subscribe(token)
        watched: list[str] = []
        try:
            for path in (reply_path, name_path):
                self.client.watch(path, token)
                watched.append(path)
            while True:
                while True:  # what fired before this read is answered by it
                    try:
                        events.get_nowait()
                    except queue.Empty:
                        break
                text = self.client.read_text(reply_path)
                if text is not None:
                    self._answered.add(request_id)
                    return text
                if not self._guest_present():
                    raise self._rebooted()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    events.get(timeout=min(self.poll_interval, remaining))
                except queue.Empty:
                    pass
        except XenstoreError as exc:
            raise AgentError(f"xenstore failed while waiting for the agent: {exc}") from None
        finally:
            for path in watched:
                try:
                    self.client.unwatch(path, token)
                except XenstoreError:
                    pass
            self.client.unsubscribe(token)  # events still in flight for the token are dropped

    def finish(self, request_id: str) -> None:
        if request_id in self._sent and request_id not in self._answered:
            self._abandon(request_id)  # the guest may still answer: swept on a later send
        self._sent.discard(request_id)
        self._answered.discard(request_id)
        for kind in ("host", "guest"):
            try:
                self.client.rm(f"{self.base}/data/{kind}/{request_id}")
            except XenstoreError as exc:
                LOG.warning(
                    "could not remove data/%s/%s of domain %d: %s",
                    kind,
                    request_id,
                    self.domid,
                    exc,
                )


class VirtioSerialChannel(Channel):
    """JSON lines over the host end of a virtio-serial port (a Unix socket of the chardev)."""

    max_request_bytes = 64 * 1024

    def __init__(self, path: str, *, connect_timeout: float = 10.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(connect_timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise AgentError(f"cannot connect to the agent port {path}: {exc.strerror}") from None
        self._sock.settimeout(None)
        self._cond = threading.Condition()
        self._replies: dict[str, str] = {}
        self._boot_id: str | None = None
        self._reboots = 0
        self._closed = False
        self._sent_at: dict[str, int] = {}
        threading.Thread(target=self._read, name="virtio-agent-reader", daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._deliver(line)
        except OSError:
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _deliver(self, line: bytes) -> None:
        try:
            body = json.loads(line)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        with self._cond:
            if body.get("event") == "hello":
                # The first hello is the agent coming up; a new boot id after it is a reboot.
                boot_id = str(body.get("boot_id"))
                if self._boot_id is not None and boot_id != self._boot_id:
                    self._reboots += 1
                self._boot_id = boot_id
            elif isinstance(body.get("id"), str):
                request_id = body.pop("id")
                if request_id in self._sent_at:
                    self._replies[request_id] = json.dumps(body)
            self._cond.notify_all()

    def send(self, request_id: str, request: str) -> None:
        line = json.dumps({"id": request_id, **json.loads(request)}, separators=(",", ":")) + "\n"
        with self._cond:
            self._sent_at[request_id] = self._reboots
        try:
            self._sock.sendall(line.encode())
        except OSError as exc:
            raise AgentError(
                f"cannot write to the agent port {self.path}: {exc.strerror}"
            ) from None

    def receive(self, request_id: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if request_id in self._replies:
                    return self._replies.pop(request_id)
                if self._reboots != self._sent_at.get(request_id, self._reboots):
                    raise AgentGuestRebooted(
                        "the guest rebooted (new boot id) while an agent request was pending"
                    )
                if self._closed:
                    raise AgentError(f"the agent port {self.path} was closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def finish(self, request_id: str) -> None:
        with self._cond:
            self._replies.pop(request_id, None)
            self._sent_at.pop(request_id, None)

    def close(self) -> None:
        self._sock.close()


# -- the client ------------------------------------------------------------------------------


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
        raise self._failure(name, reply)

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

    @staticmethod
    def _failure(name: str, reply: p.Reply) -> AgentError:
        message = reply.message[:200]
        lowered = message.lower()
        if reply.error is p.ErrorKind.UNSUPPORTED or (
            reply.error is None
            and (
                reply.returncode == "404"
                or (reply.returncode == "1" and "not" in lowered and "support" in lowered)
            )
        ):
            return AgentUnsupportedCommand(f"the guest agent does not support '{name}': {message}")
        if reply.error is p.ErrorKind.DECRYPT_FAILED or (
            reply.error is None and name == p.PASSWORD and "invalid password data" in lowered
        ):
            return AgentDecryptionFailed(
                f"the guest agent could not decrypt the '{name}' request: {message}",
                hint="the guest and host disagree on the key exchange; retry, or check the agent version",
            )
        kind = f" [{reply.error.value}]" if reply.error else ""
        return AgentError(
            f"the guest agent failed '{name}' with code {reply.returncode}{kind}: {message}"
        )

    # -- operations --------------------------------------------------------------------------

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
            self._features = frozenset(f.strip() for f in message.split(",") if f.strip())
        return self._features

    def supports_v2(self) -> bool:
        return p.FEATURE_V2 in self.features()

    def set_admin_password(self, password: str) -> str:
        """Set the guest's admin password; returns the codec used ('v2' or 'legacy')."""
        if not isinstance(password, str) or any(ch in password for ch in "\r\n\0"):
            raise InvalidRequest("the password must be a string without CR, LF or NUL")
        if self.supports_v2():
            self._password_v2(password)
            return "v2"
        if not self.allow_legacy:
            raise AgentUnsupportedCommand(
                "the guest agent offers only the legacy password exchange, which is refused",
                hint="upgrade the guest agent to one with v2, or set [agent] allow_legacy = true "
                "(the legacy exchange is breakable by anyone who sees it)",
            )
        LOG.warning("using the legacy (weak) password exchange: the guest agent does not offer v2")
        self._password_legacy(password)
        return "legacy"

    def _password_v2(self, password: str) -> None:
        pair = p.V2KeyPair()
        session = str(uuid.uuid4())
        reply = self.call(
            p.KEYINIT,
            p.v2_keyinit_value(pair),
            version=2,
            request_id=session,
            success=(p.RC_KEYINIT_OK,),
        )
        try:
            guest_public = base64.b64decode(reply.message, validate=True)
            key = pair.session_key(
                reply.message,
                session_id=session,
                host_public=pair.public,
                guest_public=guest_public,
            )
        except (ValueError, p.ProtocolError):
            raise AgentError(
                "the guest agent answered keyinit with an invalid public value"
            ) from None
        request_id = str(uuid.uuid4())
        sealed = p.v2_seal(
            key, request_id=request_id, command=p.PASSWORD, plaintext=password.encode("utf-8")
        )
        self.call(p.PASSWORD, {"session": session, **sealed}, version=2, request_id=request_id)

    def _password_legacy(self, password: str) -> None:
        private = p.legacy_private_key()
        reply = self.call(p.KEYINIT, str(p.legacy_public(private)), success=(p.RC_KEYINIT_OK,))
        try:
            shared = p.legacy_shared(private, p.legacy_parse_public(reply.message))
        except p.ProtocolError:
            raise AgentError(
                "the guest agent answered keyinit with an invalid public value"
            ) from None
        self.call(p.PASSWORD, p.legacy_encrypt_password(shared, password))

    def inject_file(self, path: str, contents: bytes) -> None:
        """Write a file in the guest (the agent confines it to its allowed directories)."""
        v2 = self.supports_v2()
        if not path.startswith("/") or ("," in path and not v2):
            raise InvalidRequest(
                f"cannot inject {path!r}: the path must be absolute (and comma-free for legacy agents)"
            )
        if v2:
            value: Any = {"path": path, "b64": base64.b64encode(contents).decode()}
            self.call(p.INJECTFILE, value, version=2)
        else:
            self.call(p.INJECTFILE, base64.b64encode(path.encode() + b"," + contents).decode())

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
