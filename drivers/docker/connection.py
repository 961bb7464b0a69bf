"""The connection to dockerd: version negotiation, bounded calls, and what its errors mean."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
import requests.exceptions

from virt.driver.errors import EngineErrors, EngineFault, FaultKind
from virt.errors import ConfigError

LOG = logging.getLogger(__name__)

#: Oldest Engine API this driver speaks (Docker 17.06): nano_cpus, init, event filters.
MIN_API_VERSION = "1.30"

START_HINT = "start dockerd (systemctl start docker), or set [docker] base_url to where it listens"


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.41' -> (1, 41)."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ConfigError(
            f"[docker] api_version {version!r} is not a version like 1.41"
        ) from None


def api_error_text(exc: docker.errors.APIError) -> str:
    """The daemon's own explanation of a refused call, without the HTTP noise."""
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or exc).strip()


class Engine:
    """A lazily connected, thread-safe handle on one dockerd.

    Every call is bounded by the client timeout; calls made inside `translate(what)` have
    docker-py's and the transport's errors turned into virtkit's (see `classify`).
    """

    def __init__(self, base_url: str, api_version: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.requested_version = api_version
        self.timeout = timeout
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()
        self.errors = EngineErrors("docker", self.classify)
        #: `with engine.translate("do x", instance=ident):` -- see EngineErrors.translate.
        self.translate = self.errors.translate

    @property
    def api(self) -> docker.APIClient:
        """The low-level client, connecting (and negotiating the version) on first use."""
        with self._lock:
            if self._api is None:
                self._api = self._connect()
            return self._api

    @property
    def api_version(self) -> str:
        return str(self.api.api_version)

    def _connect(self) -> docker.APIClient:
        if self.requested_version and version_tuple(self.requested_version) < version_tuple(
            MIN_API_VERSION
        ):
            raise ConfigError(
                f"[docker] api_version {self.requested_version} is older than {MIN_API_VERSION}, "
                "the oldest virtkit speaks",
                hint="unset it to negotiate, or set 1.30 or newer",
            )
        with self.translate("negotiate the API version"):
            # version="auto" asks the daemon: a DockerException wrapping the transport's
            # error when it cannot (classify reads the wrapped one).
            api = docker.APIClient(
                base_url=self.base_url,
                version=self.requested_version or "auto",
                timeout=self.timeout,
            )
        negotiated = str(api.api_version)
        if version_tuple(negotiated) < version_tuple(MIN_API_VERSION):
            api.close()
            raise ConfigError(
                f"dockerd at {self.base_url} speaks Engine API {negotiated}; virtkit needs "
                f"{MIN_API_VERSION} or newer",
                hint="upgrade Docker (17.06 or newer) or set [docker] api_version",
            )
        LOG.info("connected to dockerd at %s (API %s)", self.base_url, negotiated)
        return api

    def check(self) -> dict[str, Any]:
        """Ping the daemon and return `docker version`; raise if it cannot serve us."""
        with self.translate("ask dockerd for its version"):
            version: dict[str, Any] = self.api.version(api_version=False)
            server_api = str(version.get("ApiVersion", "0"))
            if self.requested_version and version_tuple(self.requested_version) > version_tuple(
                server_api
            ):
                raise ConfigError(
                    f"[docker] api_version {self.requested_version} is newer than the daemon's "
                    f"API {server_api}",
                    hint="unset [docker] api_version to negotiate it",
                )
            return version

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
                self._api = None


    def classify(self, exc: BaseException) -> EngineFault | None:
        """What a docker-py or transport exception means (None: not dockerd's)."""
        if isinstance(exc, docker.errors.APIError):
            return _api_fault(exc)
        chain = list(_causes(exc))
        if any(isinstance(e, PermissionError) and e.errno in (errno.EACCES, errno.EPERM)
               for e in chain) and self._socket_path():
            user = _user_name()
            return EngineFault(
                FaultKind.ACCESS_DENIED,
                f"user {user} may not use dockerd's socket {self._socket_path()} "
                "(permission denied)",
                hint=f"add the user {user} to the docker group (usermod -aG docker {user}, "
                "then log in again) or set [docker] base_url",
            )
        if any(isinstance(e, requests.exceptions.Timeout) for e in chain):
            return EngineFault(
                FaultKind.UNAVAILABLE,
                f"dockerd at {self.base_url} did not answer within {self.timeout:g}s",
                hint="check the daemon's health (docker info) or raise [docker] call_timeout",
            )
        if any(isinstance(e, requests.exceptions.ConnectionError | ConnectionError)
               for e in chain):
            return EngineFault(FaultKind.UNAVAILABLE,
                               f"cannot reach dockerd at {self.base_url}: {_short(exc)}",
                               hint=START_HINT)
        if isinstance(exc, docker.errors.DockerException):
            return EngineFault(FaultKind.UNAVAILABLE,
                               f"dockerd at {self.base_url} failed: {_short(exc)}")
        return None

    def _socket_path(self) -> str | None:
        """The Unix socket of `base_url`, or None for a TCP daemon."""
        parsed = urlparse(self.base_url)
        if parsed.scheme in ("unix", "http+unix"):
            return parsed.path or None
        return None


def _api_fault(exc: docker.errors.APIError) -> EngineFault:
    """A refused call: the daemon's own explanation, by HTTP status."""
    text = api_error_text(exc)
    if isinstance(exc, docker.errors.NotFound):
        return EngineFault(FaultKind.NOT_FOUND, text)
    status = exc.status_code
    said = f"dockerd said: {text}"
    if status == 409 and "is not running" in text:
        return EngineFault(FaultKind.INVALID_STATE, said, hint="start it first")
    if status == 400:
        return EngineFault(FaultKind.INVALID_REQUEST, said)
    if status in (401, 403):
        return EngineFault(
            FaultKind.ACCESS_DENIED, said,
            hint="dockerd (or its authorization plugin) refuses this client: check the "
            "daemon's authorization rules, or set [docker] base_url to a daemon it may use",
        )
    return EngineFault(FaultKind.FAILED, said)


def _causes(exc: BaseException, depth: int = 6) -> Iterator[BaseException]:
    """`exc` and what it wraps: its cause, its context, and exceptions in its args (urllib3
    and requests keep the socket's error there)."""
    seen: set[int] = set()
    todo = [(exc, 0)]
    while todo:
        current, level = todo.pop(0)
        if id(current) in seen or level > depth:
            continue
        seen.add(id(current))
        yield current
        inner = [current.__cause__, current.__context__,
                 *(a for a in current.args if isinstance(a, BaseException))]
        todo += [(e, level + 1) for e in inner if e is not None]


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _short(exc: BaseException) -> str:
    """The last, most specific line of a chained transport error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1][:300]
