"""The driver's record of the container runs it SIGKILLed itself.

Docker records that a container died of SIGKILL (exit code 137) but not who sent it. A
SIGKILL the driver sent (power_off past its timeout, a reboot past its grace, destroy of a
running container) is a stop; one from anyone else (`docker kill`, the OOM killer, a
daemon shutdown past its grace) is a crash. So, just before it forces a stop, the driver
records the container id with the `StartedAt` of the run it is about to kill; a 137 exit
of that very run reads SHUTDOWN, any other 137 reads CRASHED.

The record lives in memory and, for stops whose container outlives them (power_off,
reboot), in `<state_path>/docker/forced-stops-<host>.json`, so that a restarted compute
service still reads its own forced stops as SHUTDOWN. The file is re-read when it changed
(another driver process on the same state_path and host) and merged before each write.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

LOG = logging.getLogger(__name__)

#: Records kept at most (oldest dropped first); a host runs far fewer containers.
MAX_RECORDS = 4096


class ForcedStops:
    """container id -> StartedAt of the run the driver SIGKILLed; thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._runs: dict[str, str] = {}
        self._persisted: set[str] = set()
        self._stamp: tuple[int, int] | None = None
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        """Re-read the file if it changed since it was last read or written (lock held)."""
        if self._path is None:
            return
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return
        except OSError as exc:
            LOG.warning("docker: cannot read forced-stop record %s: %s", self._path, exc)
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError) as exc:
            LOG.warning("docker: ignoring unreadable forced-stop record %s: %s", self._path, exc)
            return
        self._stamp = stamp
        if not isinstance(data, dict):
            return
        for cid in self._persisted - set(data):  # forgotten by another process
            self._runs.pop(cid, None)
        for cid, started_at in data.items():
            self._runs[str(cid)] = str(started_at)
        self._persisted = {str(cid) for cid in data}

    def _save(self) -> None:
        """Write the persisted records (called with the lock held)."""
        if self._path is None:
            return
        data = {cid: self._runs[cid] for cid in self._persisted if cid in self._runs}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, self._path)
            stat = self._path.stat()
            self._stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            LOG.warning("docker: could not save forced-stop record %s: %s", self._path, exc)

    def record(self, container_id: str, started_at: str, *, persist: bool = True) -> None:
        """The driver is about to SIGKILL the run of `container_id` started at `started_at`."""
        with self._lock:
            self._refresh()
            self._runs.pop(container_id, None)
            self._runs[container_id] = started_at
            while len(self._runs) > MAX_RECORDS:
                oldest = next(iter(self._runs))
                del self._runs[oldest]
                self._persisted.discard(oldest)
            if persist:
                self._persisted.add(container_id)
                self._save()
            elif container_id in self._persisted:
                self._persisted.discard(container_id)
                self._save()

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._refresh()
            if self._runs.pop(container_id, None) is None:
                return
            if container_id in self._persisted:
                self._persisted.discard(container_id)
                self._save()

    def matches(self, container_id: str, started_at: str) -> bool:
        """Whether the driver SIGKILLed exactly this run of the container."""
        with self._lock:
            self._refresh()
            return bool(started_at) and self._runs.get(container_id) == started_at

    def has(self, container_id: str) -> bool:
        """Whether the driver SIGKILLed the container's latest recorded run.

        For a die event whose run can no longer be inspected (the container was removed or
        already restarted): the event does not say which run died.
        """
        with self._lock:
            self._refresh()
            return container_id in self._runs
