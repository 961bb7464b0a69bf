"""Making sure an image is present: inspect, else pull with the whole stream read."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import docker.errors

from drivers.docker.client import Engine, api_error_text
from virt.errors import ImageError, ImageNotFound

LOG = logging.getLogger(__name__)

# Phrases with which registries and the daemon say "there is no such image".
_MISSING_PHRASES = (
    "not found",
    "manifest unknown",
    "pull access denied",
    "repository does not exist",
    "no such host",
)

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


def pull_error(ref: str, text: str) -> ImageNotFound | ImageError:
    """The virtkit error for a failed pull of `ref` with the daemon's `text`."""
    lowered = text.lower()
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
    """Pull in a worker thread: docker-py reads pull streams without a socket timeout."""
    repo, tag = split_reference(ref)
    deadline = time.monotonic() + pull_timeout
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            with engine.translate(f"pull image {ref!r}"):
                try:
                    stream = engine.api.pull(repo, tag=tag, stream=True, decode=True)
                    drain_pull_stream(ref, stream, deadline=deadline, progress=progress)
                except docker.errors.APIError as exc:
                    raise pull_error(ref, api_error_text(exc)) from None
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name=f"docker-pull-{ref}", daemon=True)
    worker.start()
    worker.join(pull_timeout)
    if not outcome:
        raise ImageError(
            f"pulling image {ref!r} did not finish within {pull_timeout:g}s",
            hint="raise [docker] pull_timeout or pre-load the image with 'docker load'",
        )
    if outcome[0] is not None:
        raise outcome[0]
