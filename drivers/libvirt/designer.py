"""Policy: turn an instance, its disks, volumes and VIFs into a domain description."""

from __future__ import annotations

import string
from collections.abc import Sequence

from drivers.libvirt import xml
from drivers.libvirt.images import InstanceDisks
from virt.errors import InvalidRequest
from virt.model import ImageRef, Instance, Vif

DEFAULT_CMDLINE = "console=ttyS0"


def interface_for(vif: Vif) -> xml.Interface:
    """A bridge if the VIF names one, else the libvirt network it names, else usermode NAT."""
    if vif.bridge:
        return xml.Interface(mac=vif.address, type="bridge", source=vif.bridge,
                             model=vif.model or "virtio")
    if vif.network:
        return xml.Interface(mac=vif.address, type="network", source=vif.network,
                             model=vif.model or "virtio")
    return xml.Interface(mac=vif.address, type="user", model=vif.model or "virtio")


def free_targets(used: set[str], count: int, prefix: str = "vd") -> list[str]:
    """The next `count` device names with `prefix` not in `used` (vdb, vdc, ...)."""
    names = [prefix + c for c in string.ascii_lowercase if prefix + c not in used]
    if len(names) < count:
        raise InvalidRequest("no free disk device names left")
    return names[:count]


def domain_for(
    *,
    instance: Instance,
    image: ImageRef,
    virt_type: str,
    disks: InstanceDisks,
    volume_disks: Sequence[xml.Disk],
    vifs: Sequence[Vif],
    cache_mode: str | None,
) -> xml.Domain:
    """The domain to define for `instance`."""
    used = {d.target_dev for d in volume_disks}
    if "vda" in used:
        raise InvalidRequest("block device mountpoint /dev/vda is the root disk",
                             hint="attach volumes at /dev/vdb or later")
    local = [xml.Disk(target_dev="vda", source_path=disks.root, driver_type="qcow2",
                      cache=cache_mode)]
    extra = [p for p in (disks.ephemeral, disks.swap) if p]
    for path, dev in zip(extra, free_targets(used | {"vda"}, len(extra)), strict=True):
        local.append(xml.Disk(target_dev=dev, source_path=path, driver_type="raw",
                              cache=cache_mode))
    os_conf = xml.Os(arch="x86_64" if virt_type in ("kvm", "qemu") else None)
    if disks.kernel:
        os_conf.kernel = disks.kernel
        os_conf.initrd = disks.ramdisk
        os_conf.cmdline = image.kernel_cmdline or DEFAULT_CMDLINE
    flavor = instance.flavor
    return xml.Domain(
        name=instance.name,
        uuid=instance.uuid,
        type=virt_type,
        memory_kib=flavor.memory_mb * 1024,
        vcpus=flavor.vcpus,
        os=os_conf,
        cpu_mode="host-passthrough" if virt_type == "kvm" else None,
        disks=local + list(volume_disks),
        interfaces=[interface_for(v) for v in vifs],
        serials=[xml.SerialFile(path=disks.console_log)],
        metadata=xml.InstanceMetadata(
            name=instance.name,
            flavor=flavor.name,
            vcpus=flavor.vcpus,
            memory_mb=flavor.memory_mb,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
            swap_mb=flavor.swap_mb,
            image=image.ref,
            properties=dict(instance.metadata),
        ),
    )
