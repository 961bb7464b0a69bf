"""Policy: turn an instance, its disks, volumes and VIFs into a domain description."""

from __future__ import annotations

import os
import secrets
import string
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from drivers.libvirt import xen, xml
from drivers.libvirt.images import InstanceDisks
from virt.driver import spawn_image
from virt.errors import InvalidRequest
from virt.model import Flavor, ImageRef, Instance, Vif

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
    virt_type: str,
    disks: InstanceDisks,
    volume_disks: Sequence[xml.Disk],
    vifs: Sequence[Vif],
    cache_mode: str | None,
) -> xml.Domain:
    """The domain to define for `instance`, booting `instance.image`."""
    return _domain(name=instance.name, uuid=instance.uuid, flavor=instance.flavor,
                   properties=instance.metadata, image=spawn_image(instance),
                   virt_type=virt_type, disks=disks, volume_disks=volume_disks, vifs=vifs,
                   cache_mode=cache_mode)


def _domain(
    *,
    name: str,
    uuid: str,
    flavor: Flavor,
    properties: Mapping[str, str],
    image: ImageRef,
    virt_type: str,
    disks: InstanceDisks,
    volume_disks: Sequence[xml.Disk],
    vifs: Sequence[Vif],
    cache_mode: str | None,
) -> xml.Domain:
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
    return xml.Domain(
        name=name,
        uuid=uuid,
        type=virt_type,
        memory_kib=flavor.memory_mb * 1024,
        vcpus=flavor.vcpus,
        os=os_conf,
        cpu_mode="host-passthrough" if virt_type == "kvm" else None,
        disks=local + list(volume_disks),
        interfaces=[interface_for(v) for v in vifs],
        serials=[xml.SerialFile(path=disks.console_log)],
        metadata=xml.InstanceMetadata(
            name=name,
            flavor=flavor.name,
            vcpus=flavor.vcpus,
            memory_mb=flavor.memory_mb,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
            swap_mb=flavor.swap_mb,
            image=image.ref,
            properties=dict(properties),
        ),
    )


# -- templates -------------------------------------------------------------------------------
# Most spawns differ from an earlier one only in the instance's name, uuid, directory and
# metadata properties (and NICs): the rest of the domain follows from the flavor, the image
# and the disk layout. The domain is built once per such combination with tokens in those
# fields (through `_domain`, so the result is the same XML), and each spawn copies it and
# fills them in. Tokens are random per process: no user string can contain one by chance.
_TOKEN = secrets.token_hex(8)
_NAME, _UUID, _DIR = (f"virtkit-template-{_TOKEN}-{f}" for f in ("name", "uuid", "dir"))
_MAX_TEMPLATES = 64
_templates: OrderedDict[tuple[object, ...], xml.Template] = OrderedDict()
_templates_lock = threading.Lock()


def domain_xml(
    *,
    instance: Instance,
    virt_type: str,
    disks: InstanceDisks,
    volume_disks: Sequence[xml.Disk],
    vifs: Sequence[Vif],
    cache_mode: str | None,
    xen_bridge: str = "",
) -> str:
    """The XML of `domain_for(...)`, from a cached template when the layout allows one
    (on Xen, a PV guest whose bridgeless NICs join `xen_bridge`)."""
    layout = _layout(disks)
    if virt_type == xen.DOMAIN_TYPE:  # a PV guest: no template (Xen spawns are few and slow)
        return xen.pv_domain(domain_for(instance=instance, virt_type=virt_type, disks=disks,
                                        volume_disks=volume_disks, vifs=vifs,
                                        cache_mode=cache_mode), spawn_image(instance),
                             bridge=xen_bridge).to_xml()
    if volume_disks or layout is None:  # volumes pick the local disks' names: build it all
        return domain_for(instance=instance, virt_type=virt_type, disks=disks,
                          volume_disks=volume_disks, vifs=vifs, cache_mode=cache_mode).to_xml()
    image, flavor = spawn_image(instance), instance.flavor
    key = (virt_type, cache_mode, image.ref, image.kernel_cmdline, layout, flavor.name,
           flavor.vcpus, flavor.memory_mb, flavor.root_gb, flavor.ephemeral_gb, flavor.swap_mb)
    template = _templates.get(key)
    if template is None:
        template = _template(flavor, image, virt_type, layout, cache_mode)
        with _templates_lock:
            _templates[key] = template
            while len(_templates) > _MAX_TEMPLATES:
                _templates.popitem(last=False)
    what = f"domain {instance.name}"
    try:
        root, anchors = template.render(
            {_NAME: instance.name, _UUID: instance.uuid, _DIR: disks.directory})
        if instance.metadata:
            xml.InstanceMetadata.add_properties(anchors["instance"], instance.metadata)
        serial = anchors["serial"]
        for vif in vifs:  # interfaces go after the disks, before the serial port
            serial.addprevious(interface_for(vif).to_element())
    except (ValueError, TypeError) as exc:
        # lxml refuses control characters and NULs: the same error as Domain.to_xml.
        raise InvalidRequest(f"{what}: a value cannot be stored in XML ({exc})",
                             hint="remove control characters from names and metadata") from None
    return xml.to_text(root, what)


def _layout(disks: InstanceDisks) -> tuple[str | None, ...] | None:
    """The instance's file paths relative to its directory; None if one is outside it."""
    prefix = disks.directory + os.sep
    rel: list[str | None] = []
    for path in (disks.root, disks.ephemeral, disks.swap, disks.kernel, disks.ramdisk):
        if path is None:
            rel.append(None)
        elif path.startswith(prefix):
            rel.append(path[len(prefix):])
        else:
            return None
    return tuple(rel)


def _template(flavor: Flavor, image: ImageRef, virt_type: str, layout: tuple[str | None, ...],
              cache_mode: str | None) -> xml.Template:
    root, eph, swap, kernel, ramdisk = (
        None if rel is None else os.path.join(_DIR, rel) for rel in layout)
    assert root is not None
    disks = InstanceDisks(directory=_DIR, root=root, ephemeral=eph, swap=swap, kernel=kernel,
                          ramdisk=ramdisk)
    element = _domain(name=_NAME, uuid=_UUID, flavor=flavor,
                      properties={}, image=image, virt_type=virt_type, disks=disks,
                      volume_disks=(), vifs=(), cache_mode=cache_mode).to_element()
    instance_el = element.find(f"metadata/{{{xml.VIRTKIT_NS}}}instance")
    serial_el = element.find("devices/serial")
    assert instance_el is not None and serial_el is not None
    return xml.Template(element, (_NAME, _UUID, _DIR),
                        anchors={"instance": instance_el, "serial": serial_el})
