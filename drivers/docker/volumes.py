"""GlusterFS volumes for containers, the way Kubernetes' GlusterFS plugin mounts them.

The host mounts the export (FUSE, once per export under `<instances_path>/gluster-mounts`)
and the container gets a bind mount of the volume's directory (`data.name` on the export,
made if missing) at the block device's mountpoint path. Only at spawn: docker cannot add a
mount to an existing container, so attach_volume stays unsupported. An export is unmounted
when no container (of any state) binds anything on it any more. iSCSI LUNs are block
devices a container cannot use this way and are refused with what is supported.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from typing import Any

from virt.errors import InvalidRequest, UnsupportedOperation, VolumeError
from virt.model import BlockDevice
from virt.volume.glusterfs import parse_glusterfs_volume, reachable_servers
from virt.volume.glusterfs_mount import GlusterMounts

LOG = logging.getLogger(__name__)

MOUNTS_DIR = "gluster-mounts"
SUPPORTED = "GlusterFS volumes at spawn (driver_volume_type glusterfs)"


class DockerVolumes:
    """Host FUSE mounts of GlusterFS exports and the bind mounts made of them."""

    def __init__(self, instances_path: str, *, probe_timeout: float = 10.0,
                 driver_name: str = "docker") -> None:
        self.mounts = GlusterMounts(os.path.join(instances_path, MOUNTS_DIR))
        self._timeout = probe_timeout
        self._driver = driver_name

    def validate(self, block_devices: Sequence[BlockDevice]) -> None:
        """Refuse what cannot be bound (another protocol, a relative mountpoint) up front."""
        for bdm in block_devices:
            kind = bdm.connection.driver_volume_type.lower()
            if kind != "glusterfs":
                raise UnsupportedOperation(self._driver, f"{kind} volumes",
                                           reason=f"a container takes {SUPPORTED}")
            parse_glusterfs_volume(bdm.connection)
            if not posixpath.isabs(bdm.mountpoint) or ":" in bdm.mountpoint:
                raise InvalidRequest(f"mountpoint {bdm.mountpoint!r} is not an absolute path "
                                     f"in the container", hint="e.g. /data")

    def binds(self, block_devices: Sequence[BlockDevice]) -> list[str]:
        """Mount each export (if not yet) and return docker binds 'HOST:CONTAINER:rw'."""
        self.validate(block_devices)
        out: list[str] = []
        for bdm in block_devices:
            volume = parse_glusterfs_volume(bdm.connection)
            reachable_servers(volume, self._timeout)  # typed: unreachable before mounting
            self.mounts.mount(volume)
            source = self.mounts.file_path(volume)
            try:
                os.makedirs(source, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise VolumeError(f"{volume}: cannot make the directory {volume.name!r} on "
                                  f"the export: {exc.strerror}") from None
            if not os.path.isdir(source):
                raise VolumeError(f"{volume}: {volume.name!r} on the export is a file, not a "
                                  f"directory a container can mount")
            out.append(f"{source}:{posixpath.normpath(bdm.mountpoint)}:rw")
        return out

    def release(self, api: Any) -> None:
        """Unmount the exports no container binds anything on any more."""
        try:
            if not os.listdir(self.mounts.base_dir):
                return
        except OSError:
            return
        try:
            containers = api.containers(all=True)
        except Exception as exc:  # dockerd unreachable: the next release tries again
            LOG.warning("GlusterFS mounts not released: %s", exc)
            return
        in_use = [m.get("Source", "") for c in containers for m in (c.get("Mounts") or [])]
        self.mounts.release_unused(in_use)


__all__ = ["DockerVolumes"]
