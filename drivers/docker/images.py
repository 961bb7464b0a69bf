"""Images: making sure one is present (inspect, else pull with the whole stream read), and
committing a container to one (a snapshot)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import docker.auth
import docker.errors
import requests.exceptions

from drivers.docker import spec
from drivers.docker.connection import Engine, api_error_text
from virt.errors import ImageError, ImageNotFound, VirtError

LOG = logging.getLogger(__name__)

# Phrases with which registries and the daemon say "there is no such image".
_MISSING_PHRASES = (
    "not found",
    "manifest unknown",
    "pull access denied",
    "repository does not exist",
    "no such host",
)
# Phrases with which the daemon says it could not reach the registry at all.
_UNREACHABLE_PHRASES = (
    "no such host",
    "dial tcp",
    "i/o timeout",
    "connection refused",
    "network is unreachable",
    "no route to host",
    "tls handshake timeout",
    "client.timeout exceeded",
    "server misbehaving",
    "temporary failure in name resolution",
)
# An image id, full (sha256:<64 hex>, or bare) or short (sha256:<prefix>, or 12 hex).
_IMAGE_ID_RE = re.compile(r"^(?:sha256:[0-9a-f]{1,64}|[0-9a-f]{12}|[0-9a-f]{64})$")

Progress = Callable[[Mapping[str, Any]], None]


def split_reference(ref: str) -> tuple[str, str | None]:
    """'repo:tag' -> ('repo', 'tag'); a digest or a bare name keeps the tag None."""
    if "@" in ref:
        return ref, None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = ref.rpartition(":")
        return repo, tag
    return ref, "latest"


def drain_pull_stream(
    ref: str, stream: Iterable[Mapping[str, Any]], *, deadline: float, progress: Progress | None
) -> None:
    """Read a decoded pull stream to its end; raise on the first in-band error.

    The daemon answers a failed pull with HTTP 200 and an `errorDetail` object inside the
    stream; an abandoned stream cancels the pull, so it is always read to the end.
    """
    for message in stream:
        if "errorDetail" in message or "error" in message:
            detail = message.get("errorDetail") or {}
            text = str(detail.get("message") or message.get("error") or "unknown error")
            raise pull_error(ref, text)
        if progress is not None:
            progress(message)
        if time.monotonic() > deadline:
            raise ImageError(
                f"pulling image {ref!r} did not finish in time",
                hint="raise [docker] pull_timeout or pre-load the image with 'docker load'",
            )


def is_image_id(ref: str) -> bool:
    """Whether `ref` names an image by id: only a local image has one, nothing to pull."""
    return bool(_IMAGE_ID_RE.match(ref))


def pull_error(ref: str, text: str, *, refused: bool = False) -> ImageNotFound | ImageError:
    """The virtkit error for a failed pull of `ref` with the daemon's `text`.

    `refused`: dockerd refused the pull request itself (an HTTP error, before any
    progress), which is where it says that the registry cannot be reached; a failure
    inside the stream of a pull under way stays an ImageError.
    """
    lowered = text.lower()
    if refused and any(phrase in lowered for phrase in _UNREACHABLE_PHRASES):
        return ImageNotFound(
            f"image {ref!r} is not on this host, and its registry could not be reached to "
            f"pull it: {text}",
            hint="load it locally (docker load / docker import), or fix the daemon's route, "
            "DNS or proxy to the registry",
        )
    if any(phrase in lowered for phrase in _MISSING_PHRASES):
        return ImageNotFound(
            f"image {ref!r} is not on this host and could not be pulled: {text}",
            hint="load it locally (docker load / docker import) or make a registry reachable",
        )
    return ImageError(f"pulling image {ref!r} failed: {text}")


def ensure_image(
    engine: Engine,
    ref: str,
    *,
    pull: bool,
    pull_timeout: float,
    progress: Progress | None = None,
) -> None:
    """Make sure image `ref` is present, pulling it if allowed; ImageNotFound/ImageError else."""
    with engine.translate(f"inspect image {ref!r}"):
        try:
            engine.api.inspect_image(ref)
            return
        except docker.errors.NotFound:
            pass
    if is_image_id(ref):  # a pull would read the id as a repository name on Docker Hub
        raise ImageNotFound(
            f"image {ref!r} is not on this host; an image id cannot be pulled",
            hint="load the image (docker load), or name it by repository[:tag] or digest",
        )
    if not pull:
        raise ImageNotFound(
            f"image {ref!r} is not on this host", hint="load it, or set [docker] pull_missing"
        )
    LOG.info("pulling image %s", ref)
    _pull_bounded(engine, ref, pull_timeout=pull_timeout, progress=progress)
    with engine.translate(f"inspect image {ref!r}"):
        try:
            engine.api.inspect_image(ref)
        except docker.errors.NotFound:
            raise ImageError(f"pull of image {ref!r} ended but the image is not there") from None


def _pull_bounded(
    engine: Engine, ref: str, *, pull_timeout: float, progress: Progress | None
) -> None:
    """Pull in a worker thread, bounded by `pull_timeout`; on timeout, cancel the pull.

    docker-py's own pull() reads its stream without any socket timeout, so a stalled
    registry would hold the thread (and dockerd's pull) forever. Here the request carries a
    socket timeout of `pull_timeout` (it bounds the wait for dockerd's first answer), and
    when the deadline passes the caller shuts the response's socket down: the worker's
    blocked read ends at once, and dockerd, seeing its client gone, cancels the pull.
    """
    repo, tag = split_reference(ref)
    deadline = time.monotonic() + pull_timeout
    outcome: list[BaseException | None] = []
    live = _LivePull()

    def work() -> None:
        try:
            with engine.translate(f"pull image {ref!r}"):
                try:
                    stream = _pull_stream(engine, repo, tag, pull_timeout, live)
                    drain_pull_stream(ref, stream, deadline=deadline, progress=progress)
                except docker.errors.APIError as exc:
                    raise pull_error(ref, api_error_text(exc), refused=True) from None
                finally:
                    live.close()
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name=f"docker-pull-{ref}", daemon=True)
    worker.start()
    worker.join(pull_timeout)
    if not outcome or live.cancelled:
        live.cancel()
        worker.join(min(engine.timeout, 10.0))
        if worker.is_alive():
            LOG.warning("docker: the pull of %s did not stop after its cancellation", ref)
        raise ImageError(
            f"pulling image {ref!r} did not finish within {pull_timeout:g}s (pull cancelled)",
            hint="raise [docker] pull_timeout or pre-load the image with 'docker load'",
        )
    if outcome[0] is not None:
        raise outcome[0]


class _LivePull:
    """The HTTP response of a running pull, so that another thread can cut it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: Any = None
        self.cancelled = False

    def attach(self, response: Any) -> None:
        with self._lock:
            self._response = response
            cancelled = self.cancelled
        if cancelled:
            _cut(response)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            response = self._response
        if response is not None:
            _cut(response)

    def close(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()


def _pull_stream(
    engine: Engine, repo: str, tag: str | None, timeout: float, live: _LivePull
) -> Iterable[Mapping[str, Any]]:
    """POST /images/create like docker-py's pull(), but with a socket timeout and the
    response handed to `live` (docker-py's pull() offers neither)."""
    api = engine.api
    params: dict[str, Any] = {"fromImage": repo}
    if tag is not None:
        params["tag"] = tag
    headers: dict[str, str] = {}
    registry, _ = docker.auth.resolve_repository_name(repo)
    header = docker.auth.get_config_header(api, registry)
    if header:
        headers["X-Registry-Auth"] = header
    # docker-py's private helpers, as its pull() uses them: pull() hides the response.
    # The socket timeout outlasts the caller's deadline a little, so that the caller
    # cancels; before dockerd's first answer it is what ends the request.
    response = api._post(
        api._url("/images/create"), params=params, headers=headers, stream=True,
        timeout=timeout + 1.0,
    )
    live.attach(response)
    api._raise_for_status(response)
    stream: Iterable[Mapping[str, Any]] = api._stream_helper(response, decode=True)
    return stream


def _cut(response: Any) -> None:
    """Shut the socket under `response` down (this wakes a read blocked in another thread,
    where close() would not), then close the response."""
    sock = _response_socket(response)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        response.close()
    except Exception:  # closing a cut stream may fail in many ways; it is cut either way
        LOG.debug("closing a cancelled pull stream failed", exc_info=True)


def _response_socket(response: Any) -> socket.socket | None:
    """The socket a `requests` streaming response reads from (urllib3 1.x and 2.x)."""
    raw = getattr(response, "raw", None)
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        return sock
    fp = getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(fp, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def commit(
    engine: Engine, container_id: str, repository: str, tag: str, *, ident: str,
    instance_uuid: str, timeout: float,
) -> str:
    """Commit the container to image `repository:tag`, labelled as a snapshot of the
    instance; its image id. Bounded by `timeout`, not the call timeout: a commit copies
    the container's whole filesystem (paused meanwhile)."""
    image = f"{repository}:{tag}"
    api = engine.api
    params = {
        "container": container_id, "repo": repository, "tag": tag,
        "comment": f"virtkit snapshot of {ident}", "pause": True,
    }
    with engine.translate(f"commit the container to image {image!r}", instance=ident):
        try:
            # docker-py's private helpers, as its commit() uses them: commit() takes no
            # timeout.
            response = api._post_json(
                api._url("/commit"), data={"Labels": spec.snapshot_labels(instance_uuid)},
                params=params, timeout=(engine.timeout, timeout),
            )
            result: dict[str, Any] = api._result(response, json=True)
        except requests.exceptions.ReadTimeout:
            raise _commit_timeout(ident, instance_uuid, image, timeout) from None
    return str(result.get("Id", ""))


def _commit_timeout(ident: str, instance_uuid: str, image: str, timeout: float) -> VirtError:
    """The error of a commit that outlasted `snapshot_timeout`; dockerd goes on with it."""
    label = f"{spec.LABEL_SNAPSHOT_OF}={instance_uuid}"
    LOG.warning("docker: commit of %s to %s outlasted %gs; dockerd may still create the image",
                ident, image, timeout)
    return VirtError(
        f"the snapshot of {ident} to {image!r} did not finish within {timeout:g}s; dockerd "
        "cannot cancel a commit, so it may still create that image (and unpause the "
        "container) when the commit ends",
        hint=f"look for it with 'docker image ls --filter label={label}' and remove it with "
        "docker rmi if unwanted; raise [docker] snapshot_timeout for large containers",
    )
