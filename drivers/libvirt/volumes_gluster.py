"""GlusterFS volumes for libvirt: QEMU's native gluster access, or a FUSE mount as fallback.

Native (`[libvirt] gluster_native = true`, the default): a `<disk type='network'>` with
`<source protocol='gluster' name='VOLUME/FILE'>` and one `<host>` per server (the export's,
then the backups); QEMU reaches the brick through libgfapi and no FUSE mount is in the data
path. Fallback (`gluster_native = false`, or a QEMU without its gluster block driver): the
export is mounted once under `<instances_path>/gluster-mounts` and the domain gets the file
on it; the mount goes when no domain on the connection uses a file on it any more.
"""

from __future__ import annotations

import glob
import logging
import os

import libvirt

from drivers.libvirt import xml
from drivers.libvirt.connection import Connection
from drivers.libvirt.volumes import PreparedVolume
from virt.errors import VolumeError
from virt.model import BlockDevice, Instance
from virt.volume.glusterfs import GlusterConnector, GlusterVolume, parse_glusterfs_volume
from virt.volume.glusterfs_mount import GlusterMounts, pid_from_file

LOG = logging.getLogger(__name__)

MOUNTS_DIR = "gluster-mounts"
#: Where a modular QEMU keeps its gluster block driver (qemu-block-extra on Debian).
QEMU_GLUSTER_MODULES = ("/usr/lib/*/qemu/block-gluster.so", "/usr/lib/qemu/block-gluster.so",
                        "/usr/lib64/qemu/block-gluster.so")
QEMU_MODULE_DIRS = ("/usr/lib/*/qemu", "/usr/lib/qemu", "/usr/lib64/qemu")


def qemu_lacks_gluster() -> bool:
    """True when this host's QEMU is modular and its gluster block driver is not installed."""
    if any(glob.glob(p) for p in QEMU_GLUSTER_MODULES):
        return False
    return any(glob.glob(f"{d}/block-*.so") for d in QEMU_MODULE_DIRS)


def mounts_dir(instances_path: str) -> str:
    """Where the FUSE fallback mounts exports: under the instances path."""
    return os.path.join(instances_path, MOUNTS_DIR)


class GlusterVolumes:
    """Prepare and release GlusterFS disks for one libvirt host."""

    def __init__(self, connection: Connection, *, instances_path: str, native: bool,
                 probe_timeout: float, mount_namespace_pidfile: str = "",
                 local: bool = False) -> None:
        self._connection = connection
        self._native = native
        if native and local and qemu_lacks_gluster():
            LOG.warning("this host's QEMU has no gluster block driver (qemu-block-extra): "
                        "GlusterFS volumes go through FUSE mounts instead")
            self._native = False
        self._timeout = probe_timeout
        self._connector = GlusterConnector()
        self.mounts = GlusterMounts(
            mounts_dir(instances_path),
            namespace_pid=pid_from_file(mount_namespace_pidfile) if mount_namespace_pidfile
            else None)

    @property
    def native(self) -> bool:
        return self._native

    @staticmethod
    def validate(block_device: BlockDevice) -> GlusterVolume:
        """Parse the connection_info; InvalidRequest naming the missing or bad field."""
        return parse_glusterfs_volume(block_device.connection)

    def prepare(self, instance: Instance, block_device: BlockDevice, *,
                cache: str | None) -> PreparedVolume:
        """Probe the file through libgfapi (typed errors), then describe the disk: a gluster
        network disk, or the file on the FUSE mount of its export (mounted if not yet)."""
        volume = self.validate(block_device)
        self._connector.probe(block_device.connection, timeout=self._timeout)
        disk = xml.Disk(
            target_dev=block_device.device_name,
            target_bus=block_device.disk_bus or "virtio",
            driver_type=volume.format,
            cache=cache,
            serial=(block_device.volume_id or None),
        )
        if self._native:
            disk.source_type, disk.protocol = "network", "gluster"
            disk.source_name = volume.source_name
            disk.hosts = [(s.host, s.port) for s in volume.servers]
        else:
            self.mounts.mount(volume)
            disk.source_type, disk.source_path = "file", self.mounts.file_path(volume)
            if not os.path.exists(disk.source_path) and not self.mounts.namespace_pid():
                raise VolumeError(f"{volume}: {disk.source_path} is not on the mounted export")
        LOG.info("%s prepared for %s at %s (%s)", volume, instance.uuid,
                 block_device.mountpoint, "native" if self._native else "FUSE")
        return PreparedVolume(disk, None)

    def owns(self, disk: xml.Disk) -> bool:
        """Whether the disk is one of ours on a FUSE mount (its release may unmount)."""
        return disk.source_type == "file" and bool(disk.source_path) and \
            (disk.source_path or "").startswith(self.mounts.base_dir + os.sep)

    def release(self, disks: list[xml.Disk] | None = None) -> None:
        """Unmount the exports no domain uses any more (a no-op while nothing is mounted)."""
        if not self._maybe_mounted():
            return
        try:
            in_use = self._connection.call(_file_sources)
            self.mounts.release_unused(in_use)
        except (libvirt.libvirtError, VolumeError) as exc:
            LOG.warning("GlusterFS mounts not released: %s", exc)

    def _maybe_mounted(self) -> bool:
        try:
            return bool(os.listdir(self.mounts.base_dir))
        except OSError:
            return False


def _file_sources(conn: libvirt.virConnect) -> set[str]:
    """The file paths every domain on the connection (live or defined) has as disks."""
    paths: set[str] = set()
    for dom in conn.listAllDomains(0):
        for flags in ((0, libvirt.VIR_DOMAIN_XML_INACTIVE) if dom.isActive() else (0,)):
            try:
                text = dom.XMLDesc(flags)
            except libvirt.libvirtError:  # gone meanwhile
                continue
            paths.update(d.source_path for d in xml.Domain.from_xml(text).disks
                         if d.source_type == "file" and d.source_path)
    return paths


__all__ = ["GlusterVolumes", "mounts_dir"]
