"""The libvirt driver's volumes, one handler per driver_volume_type (os-brick style).

The driver calls this one object; it hands each block device to the handler of its protocol
(iSCSI native or host mode, GlusterFS native or FUSE) and each release to every handler,
which ignores disks that are not its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.libvirt import xml
from drivers.libvirt.volumes import IscsiNativeVolumes, PreparedVolume
from drivers.libvirt.volumes_gluster import GlusterVolumes
from drivers.libvirt.volumes_host import IscsiHostVolumes
from virt.errors import InvalidRequest
from virt.model import BlockDevice, Instance


class LibvirtVolumes:
    """Route volume work to the handler of each block device's driver_volume_type."""

    def __init__(self, iscsi: IscsiNativeVolumes | IscsiHostVolumes,
                 gluster: GlusterVolumes) -> None:
        self.iscsi = iscsi
        self.gluster = gluster
        self._host_iscsi = iscsi if isinstance(iscsi, IscsiHostVolumes) else None
        self._by_type: dict[str, IscsiNativeVolumes | IscsiHostVolumes | GlusterVolumes] = {
            "iscsi": iscsi, "glusterfs": gluster}

    @property
    def initiator(self) -> str:
        return self.iscsi.initiator

    def _handler(self, block_device: BlockDevice
                 ) -> IscsiNativeVolumes | IscsiHostVolumes | GlusterVolumes:
        kind = block_device.connection.driver_volume_type.lower()
        handler = self._by_type.get(kind)
        if handler is None:
            raise InvalidRequest(f"the libvirt driver cannot attach driver_volume_type {kind!r}",
                                 hint="supported: " + ", ".join(sorted(self._by_type)))
        return handler

    def validate(self, block_device: BlockDevice) -> object:
        """Parse the connection_info; InvalidRequest naming the missing or bad field."""
        return self._handler(block_device).validate(block_device)

    def prepare(self, instance: Instance, block_device: BlockDevice, *,
                cache: str | None) -> PreparedVolume:
        """Probe the volume and describe its disk (making a secret, login or mount as needed)."""
        return self._handler(block_device).prepare(instance, block_device, cache=cache)

    def undo_for(self, volume: PreparedVolume) -> Callable[[], None] | None:
        """What a failed spawn undoes for a prepared volume besides its secret, if anything."""
        host = self._host_iscsi
        if host is not None and volume.disk.source_type == "block":
            return lambda: host.release([volume.disk])
        if self.gluster.owns(volume.disk):
            return lambda: self.gluster.release([volume.disk])
        return None

    def release(self, disks: list[xml.Disk]) -> None:
        """Release what virtkit made for these disks (secrets, host logins, unused mounts)."""
        self.iscsi.release(disks)
        if any(self.gluster.owns(d) for d in disks):
            self.gluster.release(disks)

    def remove_secret(self, usage: str) -> None:
        self.iscsi.remove_secret(usage)

    def detached(self, block_device: BlockDevice, disk: xml.Disk) -> None:
        """After a detach: log the host out (by connection_info) or release the disk."""
        if self._host_iscsi is not None and disk.source_type == "block":
            self._host_iscsi.disconnect([block_device])  # after a restart of the process too
        else:
            self.release([disk])

    def destroyed(self, instance_uuid: str, removed_xml: str | None,
                  block_devices: Sequence[BlockDevice]) -> None:
        """After a domain is gone: its secrets, the host's logins, unused GlusterFS mounts."""
        if removed_xml and "<secret" in removed_xml:  # parse only when there is one
            self.iscsi.release(xml.Domain.from_xml(removed_xml).disks)
        if block_devices:
            self.iscsi.remove_instance_secrets(instance_uuid)
            if self._host_iscsi is not None:  # after the domain let go of the devices
                iscsi = [b for b in block_devices
                         if b.connection.driver_volume_type.lower() == "iscsi"]
                self._host_iscsi.disconnect(iscsi, force=True, raise_errors=False)
        self.gluster.release()


__all__ = ["LibvirtVolumes"]
