"""The one command handler every transport feeds: request bytes in, reply JSON out.

It never raises: bad input of any kind becomes a typed error reply. Replies are cached by
request id, so a replayed id gets the same answer without running the command twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import shlex
import subprocess
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from guest_agent import __version__, network
from guest_agent import protocol as p
from guest_agent.config import AgentConfig
from guest_agent.files import atomic_write, confined_path, confined_write
from guest_agent.passwords import PasswordSetter, SetterError

LOG = logging.getLogger(__name__)

REPLY_CACHE = 256
SESSION_TTL = 300.0
MAX_SESSIONS = 16


@dataclass(frozen=True)
class VmData:
    """What the host published for the guest (Xen: vm-data/networking/*, vm-data/hostname)."""

    networks: list[dict[str, Any]] = field(default_factory=list)
    hostname: str | None = None


VmDataSource = Callable[[], VmData]


class CommandHandler:
    """Dispatch requests to commands; holds the key-exchange state and the reply cache."""

    def __init__(self, config: AgentConfig, setter: PasswordSetter) -> None:
        self.config = config
        self.setter = setter
        self._lock = threading.Lock()
        self._replies: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._legacy_private: int | None = None
        self._legacy_shared = 0
        self._sessions: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def features(self) -> list[str]:
        names = [p.VERSION, p.FEATURES, p.KEYINIT, p.PASSWORD, p.INJECTFILE, p.RESETNETWORK]
        if self.config.update_sha256:
            names.append(p.AGENTUPDATE)
        return [*names, p.FEATURE_V2] if self.config.offer_v2 else names

    def handle(
        self,
        request_id: str,
        raw: bytes | str,
        *,
        vm_data: VmDataSource | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """The reply JSON for one request; replays of a request id get the cached reply."""
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            cached = self._replies.get(request_id)
            if cached is not None:
                LOG.info("request %s: replayed id, returning the cached reply", _safe(request_id))
                if cached[0] != digest:
                    return p.Reply.failure(
                        p.ErrorKind.CONFLICT,
                        "this request id was already used for another request",
                        version=2,
                    ).to_json()
                return cached[1]
            reply = self._dispatch(
                request_id, data, vm_data, max_bytes or self.config.max_value_bytes
            )
            text = reply.to_json()
            if p.is_request_id(request_id):
                self._replies[request_id] = (digest, text)
                while len(self._replies) > REPLY_CACHE:
                    self._replies.popitem(last=False)
        return text

    def _dispatch(
        self, request_id: str, data: bytes, vm_data: VmDataSource | None, max_bytes: int
    ) -> p.Reply:
        version, name = 1, "?"
        try:
            request = p.Request.parse(request_id, data, max_bytes=max_bytes)
            version, name = request.version, request.name
            if version == 2 and not self.config.offer_v2:
                raise p.ProtocolError(
                    p.ErrorKind.UNSUPPORTED, "v2 is disabled on this guest (offer_v2 = false)"
                )
            command = self._commands().get(request.name)
            if command is None:
                raise p.ProtocolError(
                    p.ErrorKind.UNSUPPORTED, f"No such agent command '{request.name[:32]}'"
                )
            reply = command(request, vm_data)
        except p.ProtocolError as exc:
            reply = p.Reply.failure(exc.kind, exc.message, version=version)
        except SetterError as exc:
            reply = p.Reply.failure(p.ErrorKind.OS_ERROR, str(exc), version=version)
        except OSError as exc:
            reply = p.Reply.failure(
                p.ErrorKind.OS_ERROR,
                f"{name} failed: {exc.strerror or type(exc).__name__}",
                version=version,
            )
        except Exception as exc:  # the loop must survive anything a request can trigger
            LOG.error(
                "request %s: %s failed with %s", _safe(request_id), _safe(name), type(exc).__name__
            )
            reply = p.Reply.failure(
                p.ErrorKind.OS_ERROR, f"{name[:32]} failed: internal error", version=version
            )
        LOG.info("request %s: %s -> %s", _safe(request_id), _safe(name), reply.returncode)
        return reply

    def _commands(self) -> dict[str, Callable[[p.Request, VmDataSource | None], p.Reply]]:
        return {
            p.VERSION: self._version,
            p.FEATURES: self._features,
            p.KEYINIT: self._keyinit,
            p.PASSWORD: self._password,
            p.INJECTFILE: self._injectfile,
            p.RESETNETWORK: self._resetnetwork,
            p.AGENTUPDATE: self._agentupdate,
        }

    @staticmethod
    def _ok(request: p.Request, message: str = "", code: str = p.RC_OK) -> p.Reply:
        return p.Reply(returncode=code, message=message, version=request.version)

    # -- commands ----------------------------------------------------------------------------

    def _version(self, request: p.Request, _: VmDataSource | None) -> p.Reply:
        return self._ok(request, __version__)

    def _features(self, request: p.Request, _: VmDataSource | None) -> p.Reply:
        return self._ok(request, p.format_features(self.features()))

    def _keyinit(self, request: p.Request, _: VmDataSource | None) -> p.Reply:
        if request.version == 1:
            self._require_legacy()
            host_public = p.legacy_parse_public(request.value)
            private = p.legacy_private_key()
            self._legacy_private = private
            self._legacy_shared = p.legacy_shared(private, host_public)
            return self._ok(request, str(p.legacy_public(private)), p.RC_KEYINIT_OK)
        host_key = p.v2_parse_keyinit(request.value)
        pair = p.V2KeyPair()
        key = p.v2_guest_session_key(pair, host_key, session_id=request.request_id)
        now = time.monotonic()
        self._sessions = OrderedDict(
            (s, v) for s, v in self._sessions.items() if now - v[1] < SESSION_TTL
        )
        self._sessions[request.request_id] = (key, now)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return self._ok(request, pair.public_b64, p.RC_KEYINIT_OK)

    def _password(self, request: p.Request, _: VmDataSource | None) -> p.Reply:
        if request.version == 1:
            self._require_legacy()
            if self._legacy_private is None:
                raise p.ProtocolError(
                    p.ErrorKind.BAD_REQUEST, "Password without key exchange: run keyinit first"
                )
            shared, self._legacy_private = self._legacy_shared, None  # one password per keyinit
            if not isinstance(request.value, str):
                raise p.ProtocolError(
                    p.ErrorKind.BAD_REQUEST, "the password value must be a base64 string"
                )
            password = p.legacy_decrypt_password(shared, request.value)
        else:
            value = request.value
            if not isinstance(value, Mapping) or not isinstance(value.get("session"), str):
                raise p.ProtocolError(
                    p.ErrorKind.BAD_REQUEST, 'a v2 password value is {"session", "nonce", "ct"}'
                )
            session = self._sessions.pop(value["session"], None)
            if session is None or time.monotonic() - session[1] >= SESSION_TTL:
                raise p.ProtocolError(
                    p.ErrorKind.BAD_REQUEST, "unknown or expired key session: run keyinit again"
                )
            plain = p.v2_open(
                session[0], request_id=request.request_id, command=p.PASSWORD, sealed=value
            )
            try:
                password = plain.decode("utf-8")
            except UnicodeDecodeError:
                raise p.ProtocolError(
                    p.ErrorKind.BAD_REQUEST, "the password is not UTF-8"
                ) from None
        self.setter.set_password(self.config.user, p.check_password(password))
        return self._ok(request)

    def _require_legacy(self) -> None:
        if not self.config.allow_legacy:
            raise p.ProtocolError(
                p.ErrorKind.UNSUPPORTED, "the legacy key exchange is disabled on this guest"
            )

    def _injectfile(self, request: p.Request, _: VmDataSource | None) -> p.Reply:
        if request.version == 1:  # base64("<path>,<contents>"), as every deployed agent takes it
            decoded = _b64decode(request.value, "the injectfile value")
            raw_path, comma, contents = decoded.partition(b",")
            if not comma:
                raise p.ProtocolError(
                    p.ErrorKind.BAD_REQUEST,
                    "the injectfile value must be base64('<path>,<contents>')",
                )
        else:
            value = request.value if isinstance(request.value, Mapping) else {}
            raw_path = str(value.get("path", "")).encode("utf-8")
            contents = _b64decode(value.get("b64"), "the file contents")
        try:
            path = raw_path.decode("utf-8")
        except UnicodeDecodeError:
            raise p.ProtocolError(p.ErrorKind.BAD_REQUEST, "the file path is not UTF-8") from None
        confined_path(path, self.config.inject_allowed_paths)  # early, specific refusals
        # The write itself never follows a symlink below the allowed directory, so a link
        # swapped in after the check above cannot lead it outside.
        confined_write(path, contents, self.config.inject_allowed_paths)
        return self._ok(request)

    def _resetnetwork(self, request: p.Request, vm_data: VmDataSource | None) -> p.Reply:
        value = request.value
        if isinstance(value, Mapping) and "networks" in value:
            networks = value["networks"]
            data = VmData(
                list(networks) if isinstance(networks, list) else [], value.get("hostname")
            )
        elif vm_data is not None:
            data = vm_data()
        else:
            raise p.ProtocolError(
                p.ErrorKind.BAD_REQUEST, "no network data: send it in the request value"
            )
        if not data.networks:
            raise p.ProtocolError(
                p.ErrorKind.BAD_REQUEST, "no networks to configure (vm-data/networking is empty)"
            )
        text = network.render_interfaces(data.networks)
        hostname = network.check_hostname(data.hostname) if data.hostname else None
        atomic_write(self.config.network_config_path, text.encode(), mode=0o644)
        if hostname:
            atomic_write(self.config.hostname_path, (hostname + "\n").encode(), mode=0o644)
        if self.config.network_restart_command:
            _run(self.config.network_restart_command, [])
        return self._ok(request)

    def _agentupdate(self, request: p.Request, _: VmDataSource | None) -> p.Reply:
        expected = self.config.update_sha256.lower()
        if not expected:
            raise p.ProtocolError(
                p.ErrorKind.FORBIDDEN,
                "agentupdate is disabled on this guest (no update_sha256 configured)",
            )
        value = request.value
        url = value.get("url") if isinstance(value, Mapping) else str(value).partition(",")[0]
        if not isinstance(url, str) or not url.startswith(("https://", "http://", "file://")):
            raise p.ProtocolError(
                p.ErrorKind.BAD_REQUEST, "agentupdate needs an http(s) or file URL"
            )
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read(self.config.update_max_bytes + 1)
        if len(payload) > self.config.update_max_bytes:
            raise p.ProtocolError(
                p.ErrorKind.TOO_LARGE, "the update is larger than update_max_bytes"
            )
        # The host's MD5 is not trusted; only the SHA-256 the guest's admin configured counts.
        if hashlib.sha256(payload).hexdigest() != expected:
            raise p.ProtocolError(
                p.ErrorKind.FORBIDDEN, "the update does not match the configured SHA-256"
            )
        os.makedirs(self.config.update_dir, mode=0o700, exist_ok=True)
        target = os.path.join(self.config.update_dir, f"virtkit-agent-{expected[:16]}.update")
        atomic_write(target, payload, mode=0o600)
        if self.config.update_command:
            _run(self.config.update_command, [target])
        return self._ok(request)


def _b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise p.ProtocolError(p.ErrorKind.BAD_REQUEST, f"{what} must be a base64 string")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise p.ProtocolError(p.ErrorKind.BAD_REQUEST, f"{what} is not base64") from None


def _run(command: str, extra: list[str]) -> None:
    argv = [*shlex.split(command), *extra]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetterError(f"{argv[0]} could not run: {type(exc).__name__}") from None
    if result.returncode != 0:
        raise SetterError(f"{argv[0]} exited with {result.returncode}")


def _safe(text: str) -> str:
    """Request ids and command names are untrusted: keep log lines short and printable."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text)[:40])
