"""The connection to dockerd: version negotiation, bounded calls, error normalisation."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from virt.errors import ConfigError, HypervisorUnavailable, InstanceNotFound, VirtError

LOG = logging.getLogger(__name__)

#: Oldest Engine API this driver speaks (Docker 17.06): nano_cpus, init, event filters.
MIN_API_VERSION = "1.30"

_START_HINT = "start dockerd (scripts/testbed up docker, or systemctl start docker)"


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

    Every call goes through `call()`, which bounds it by the client timeout and turns
    transport failures into HypervisorUnavailable.
    """

    def __init__(self, base_url: str, api_version: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.requested_version = api_version
        self.timeout = timeout
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()

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
            try:
                api = docker.APIClient(
                    base_url=self.base_url,
                    version=self.requested_version or "auto",
                    timeout=self.timeout,
                )
            except docker.errors.DockerException as exc:
                if isinstance(exc, docker.errors.APIError):
                    raise
                # version="auto" could not ask the daemon: it is not there.
                raise HypervisorUnavailable(
                    f"cannot reach dockerd at {self.base_url}: {_short(exc)}", hint=_START_HINT
                ) from None
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

    @contextlib.contextmanager
    def translate(self, what: str, *, instance: str | None = None) -> Iterator[None]:
        """Turn docker-py and transport errors raised inside into virtkit errors.

        `what` reads after 'could not ...'. With `instance`, a 404 is InstanceNotFound;
        other API errors become VirtError carrying the daemon's explanation.
        """
        try:
            yield
        except VirtError:
            raise
        except docker.errors.NotFound as exc:
            if instance is not None:
                raise InstanceNotFound(instance) from None
            raise VirtError(f"could not {what}: {api_error_text(exc)}") from None
        except docker.errors.APIError as exc:
            raise VirtError(f"could not {what}: dockerd said: {api_error_text(exc)}") from None
        except requests.exceptions.Timeout:
            raise HypervisorUnavailable(
                f"dockerd at {self.base_url} did not answer within {self.timeout:g}s while "
                f"trying to {what}",
                hint="check the daemon's health (docker info) or raise [docker] call_timeout",
            ) from None
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise HypervisorUnavailable(
                f"cannot reach dockerd at {self.base_url} to {what}: {_short(exc)}",
                hint=_START_HINT,
            ) from None
        except docker.errors.DockerException as exc:
            raise HypervisorUnavailable(
                f"dockerd at {self.base_url} failed while trying to {what}: {_short(exc)}"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
                self._api = None


def _short(exc: BaseException) -> str:
    """The last, most specific line of a chained transport error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1][:300]
