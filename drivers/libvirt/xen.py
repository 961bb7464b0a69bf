"""Xen PV guests through libvirt's libxl driver (`[libvirt] virt_type = xen`).

A Xen PV guest boots its kernel directly (`<os><type>xen</type>` with kernel, initrd and
command line; no firmware, no ACPI), sees its disks as `xvd*` on the Xen bus (qcow2 files
through QEMU's qdisk backend in dom0), and has no serial port: its console is the PV
console, which xenconsoled logs in dom0 as `<xen_console_dir>/guest-<domain name>.log`.
"""

from __future__ import annotations

import dataclasses
import os

from drivers.libvirt import xml
from virt.driver import Capability
from virt.errors import InvalidRequest, UnsupportedOperation
from virt.model import ImageRef

#: libvirt's domain type and its connection type ("Xen") for the libxl driver.
DOMAIN_TYPE = "xen"
ENGINE_TYPE = "Xen"
#: The PV console: a command line for images that name none.
DEFAULT_CMDLINE = "console=hvc0"

#: What the libxl driver cannot do here, and why (see docs/xen.md).
UNSUPPORTED = frozenset({Capability.VOLUME_ATTACH, Capability.VOLUME_ISCSI_CHAP})
UNSUPPORTED_REASON = ("libvirt's libxl driver attaches no iSCSI or GlusterFS network disk "
                      "(only rbd), and virtkit does not log in to volumes from dom0 for it")


def is_xen_uri(uri: str) -> bool:
    """Whether `uri` names libvirt's libxl driver (xen:///system, xen+tcp://..., xen+ssh://...)."""
    return uri.split(":", 1)[0].split("+", 1)[0] == "xen"


def xen_disk_name(target_dev: str) -> str:
    """The Xen bus name of a virtio-style device name: vdb -> xvdb (others unchanged)."""
    if target_dev.startswith("vd"):
        return "x" + target_dev
    return target_dev


def pv_domain(domain: xml.Domain, image: ImageRef) -> xml.Domain:
    """`domain` (as designed for KVM/QEMU) made into a Xen PV guest booting `image`."""
    if not domain.os.kernel:
        raise InvalidRequest(
            f"image {image.ref} has no kernel: a Xen PV guest boots its kernel directly",
            hint="give the image a kernel (and ramdisk) to boot with virt_type = xen")
    os_conf = dataclasses.replace(
        domain.os, type=DOMAIN_TYPE, arch="x86_64", machine="xenpv", boot_devs=[],
        cmdline=image.kernel_cmdline or DEFAULT_CMDLINE)
    disks = [dataclasses.replace(d, target_dev=xen_disk_name(d.target_dev), target_bus="xen",
                                 cache=None) for d in domain.disks]
    interfaces = [_pv_interface(i) for i in domain.interfaces]
    # No serial port, ACPI or APIC on a PV guest; libvirt adds the PV console and balloon.
    return dataclasses.replace(domain, type=DOMAIN_TYPE, os=os_conf, features=[],
                               cpu_mode=None, disks=disks, interfaces=interfaces, serials=[],
                               memballoon=True)


def _pv_interface(iface: xml.Interface) -> xml.Interface:
    if iface.type == "user":
        raise UnsupportedOperation("libvirt", "usermode networking",
                                   reason="libxl attaches a PV guest's NICs to a bridge")
    return dataclasses.replace(iface, model=None)  # the PV netfront, no emulated model


def console_path(definition: xml.Domain, xen_console_dir: str) -> str | None:
    """Where the guest's console output is logged: xenconsoled's log of a Xen guest, else
    the file its first serial port writes; None if it has neither."""
    if definition.type == DOMAIN_TYPE:
        return os.path.join(xen_console_dir, f"guest-{definition.name}.log")
    return definition.serials[0].path if definition.serials else None


__all__ = ["DEFAULT_CMDLINE", "DOMAIN_TYPE", "ENGINE_TYPE", "UNSUPPORTED", "console_path",
           "is_xen_uri", "pv_domain", "xen_disk_name"]
