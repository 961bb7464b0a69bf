"""FUSE mounts of GlusterFS exports: one per export under a base directory, shared by its users.

A driver that cannot hand QEMU (or a container) a gluster:// source mounts the export here
(`mount -t glusterfs`) and unmounts it when its last user goes. Who uses a mount is the
driver's to say (libvirt: the domains' disk files; docker: the containers' bind mounts), so
the count survives a restart of the process. Where the hypervisor runs in a mount namespace
of its own, the mounts are made in that namespace (`nsenter -t PID -m`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterable

from virt.errors import VolumeError
from virt.volume.glusterfs import GlusterVolume

LOG = logging.getLogger(__name__)

FSTYPE = "fuse.glusterfs"
DEFAULT_TIMEOUT_S = 30.0


def _unescape(field: str) -> str:
    """A /proc/*/mountinfo path field (octal escapes for space, tab, newline, backslash)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class GlusterMounts:
    """Mount GlusterFS exports under `base_dir`, once each, and unmount the unused ones."""

    def __init__(self, base_dir: str, *, namespace_pid: Callable[[], int | None] | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.namespace_pid = namespace_pid or (lambda: None)
        self._timeout = timeout
        self._lock = threading.Lock()

    def mountpoint(self, volume: GlusterVolume) -> str:
        """Where the volume's export is (or would be) mounted: a digest of the export."""
        digest = hashlib.sha256(volume.export.encode()).hexdigest()[:32]
        return os.path.join(self.base_dir, digest)

    def file_path(self, volume: GlusterVolume) -> str:
        """The volume's file (`data.name`) on the mounted export."""
        return os.path.join(self.mountpoint(volume), volume.name)

    def mounted(self) -> set[str]:
        """The GlusterFS mounts under base_dir (in the hypervisor's namespace)."""
        pid = self.namespace_pid()
        source = f"/proc/{pid}/mountinfo" if pid else "/proc/self/mountinfo"
        prefix = self.base_dir + os.sep
        found: set[str] = set()
        try:
            with open(source, encoding="utf-8", errors="surrogateescape") as handle:
                for line in handle:
                    fields = line.split()
                    dash = fields.index("-") if "-" in fields else -1
                    if dash < 0 or len(fields) <= dash + 1 or fields[dash + 1] != FSTYPE:
                        continue
                    point = _unescape(fields[4])
                    if point.startswith(prefix):
                        found.add(point)
        except OSError as exc:
            raise VolumeError(f"cannot read the mount table {source}: {exc.strerror}") from None
        return found

    def mount(self, volume: GlusterVolume) -> str:
        """Mount the volume's export (if not yet) and return its mountpoint."""
        point = self.mountpoint(volume)
        with self._lock:
            if point in self.mounted():
                return point
            os.makedirs(point, mode=0o755, exist_ok=True)
            options = list(volume.mount_options)
            if len(volume.servers) > 1:
                options.append("backup-volfile-servers="
                               + ":".join(s.host for s in volume.servers[1:]))
            if volume.server.port != 24007:
                options.append(f"server-port={volume.server.port}")
            source = volume.export.replace(f":{volume.server.port}:/", ":/")
            command = ["mount", "-t", "glusterfs", *(["-o", ",".join(options)] if options else []),
                       source, point]
            self._run(command, f"mount {volume.export} at {point}")
            LOG.info("GlusterFS export %s mounted at %s", volume.export, point)
            return point

    def release_unused(self, in_use: Iterable[str]) -> list[str]:
        """Unmount every mount under base_dir that none of the paths `in_use` lies in;
        return the mountpoints unmounted."""
        paths = [os.path.abspath(p) for p in in_use if p]
        gone: list[str] = []
        with self._lock:
            for point in sorted(self.mounted()):
                if any(p == point or p.startswith(point + os.sep) for p in paths):
                    continue
                try:
                    self._run(["umount", point], f"unmount {point}")
                except VolumeError as exc:  # busy: the next release tries again
                    LOG.warning("%s", exc)
                    continue
                try:
                    os.rmdir(point)
                except OSError:
                    pass
                gone.append(point)
                LOG.info("GlusterFS mount %s unmounted (no user left)", point)
        return gone

    def _run(self, command: list[str], what: str) -> None:
        pid = self.namespace_pid()
        if pid:
            command = ["nsenter", "-t", str(pid), "-m", "--", *command]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=self._timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise VolumeError(f"cannot {what}: {exc.filename} is not installed",
                              hint="apt-get install glusterfs-client") from None
        except subprocess.TimeoutExpired:
            raise VolumeError(f"cannot {what}: no answer within {self._timeout:g}s") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise VolumeError(f"cannot {what}: {why[-1] if why else f'exit {done.returncode}'}",
                              hint="is glusterfs-client installed and the server reachable?")


def pid_from_file(path: str) -> Callable[[], int | None]:
    """A namespace_pid that reads a pid file (e.g. libvirtd's) at each use; None if unset."""
    def read() -> int | None:
        if not path:
            return None
        try:
            with open(path, encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            raise VolumeError(f"cannot read the pid file {path}",
                              hint="is the hypervisor running?") from None
    return read
