"""Xen PV guests through libvirt's libxl driver (`[libvirt] virt_type = xen`).

A Xen PV guest boots its kernel directly (`<os><type>xen</type>` with kernel, initrd and
command line; no firmware, no ACPI), sees its disks as `xvd*` on the Xen bus (qcow2 files
through QEMU's qdisk backend in dom0), and has no serial port: its console is the PV
console, which xenconsoled logs in dom0 as `<xen_console_dir>/guest-<domain name>.log`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import libvirt

from drivers.libvirt import xml
from virt.driver import Capability
from virt.errors import InvalidRequest, UnsupportedOperation
from virt.model import ImageRef

#: libvirt's domain type and its connection type ("Xen") for the libxl driver.
DOMAIN_TYPE = "xen"
ENGINE_TYPE = "Xen"
#: The PV console: a command line for images that name none.
DEFAULT_CMDLINE = "console=hvc0"
#: The root disk's name on the Xen bus (the local root disk is vda on KVM/QEMU).
ROOT_DEV = "xvda"

#: How long a save waits for a PV guest's kernel to become saveable (seconds), and between tries.
SAVE_WAIT = 90.0
SAVE_RETRY = 2.0
#: libxl's message when the save failed and the guest was left running.
_SAVE_FAILED = "Failed to save domain"

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


def pv_domain(domain: xml.Domain, image: ImageRef, *, bridge: str) -> xml.Domain:
    """`domain` (as designed for KVM/QEMU) made into a Xen PV guest booting `image`; a NIC
    that names no bridge or network (usermode on KVM/QEMU) joins dom0's `bridge`."""
    if not domain.os.kernel:
        raise InvalidRequest(
            f"image {image.ref} has no kernel: a Xen PV guest boots its kernel directly",
            hint="give the image a kernel (and ramdisk) to boot with virt_type = xen")
    os_conf = dataclasses.replace(
        domain.os, type=DOMAIN_TYPE, arch="x86_64", machine="xenpv", boot_devs=[],
        cmdline=image.kernel_cmdline or DEFAULT_CMDLINE)
    disks = [dataclasses.replace(d, target_dev=xen_disk_name(d.target_dev), target_bus="xen",
                                 cache=None) for d in domain.disks]
    interfaces = [_pv_interface(i, bridge) for i in domain.interfaces]
    # No serial port, ACPI or APIC on a PV guest; libvirt adds the PV console and balloon.
    return dataclasses.replace(domain, type=DOMAIN_TYPE, os=os_conf, features=[],
                               cpu_mode=None, disks=disks, interfaces=interfaces, serials=[],
                               memballoon=True)


def _pv_interface(iface: xml.Interface, bridge: str) -> xml.Interface:
    if iface.type == "user":  # libxl has no usermode NAT: its NICs are vifs on a dom0 bridge
        if not bridge:
            raise UnsupportedOperation(
                "libvirt", "usermode networking",
                reason="libxl attaches a PV guest's NICs to a bridge and [libvirt] xen_bridge "
                "is empty")
        iface = dataclasses.replace(iface, type="bridge", source=bridge)
    return dataclasses.replace(iface, model=None)  # the PV netfront, no emulated model


def console_path(definition: xml.Domain, xen_console_dir: str) -> str | None:
    """Where the guest's console output is logged: xenconsoled's log of a Xen guest, else
    the file its first serial port writes; None if it has neither."""
    if definition.type == DOMAIN_TYPE:
        return os.path.join(xen_console_dir, f"guest-{definition.name}.log")
    return definition.serials[0].path if definition.serials else None


def managed_save(dom: libvirt.virDomain, domain_type: str, *, wait: float = SAVE_WAIT) -> None:
    """libvirt's managed save of `dom`. A Xen PV guest can be saved only once its kernel has
    published its page tables (early in its boot): until then libxl fails and leaves the
    guest running, so the save is tried again for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            dom.managedSave(0)
            return
        except libvirt.libvirtError as exc:
            if domain_type != DOMAIN_TYPE or _SAVE_FAILED not in str(exc.get_error_message()):
                raise
            # A failed save must leave no image behind: a later start would restore it.
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)
            if time.monotonic() >= deadline or dom.isActive() != 1:
                raise
        time.sleep(SAVE_RETRY)


__all__ = ["DEFAULT_CMDLINE", "DOMAIN_TYPE", "ENGINE_TYPE", "ROOT_DEV", "UNSUPPORTED",
           "console_path", "is_xen_uri", "managed_save", "pv_domain", "xen_disk_name"]
