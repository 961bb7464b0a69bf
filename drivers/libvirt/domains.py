"""Removing a domain: stop it, undefine it with what this libvirt accepts, forget its handle."""

from __future__ import annotations

import logging

import libvirt

from drivers.libvirt.connection import Connection

LOG = logging.getLogger(__name__)

UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
# Dropped one at a time, in this order, when libvirt refuses a flag (test driver, old libvirt).
_UNDEFINE_FALLBACK = (
    libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
)


def _code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


def destroy(dom: libvirt.virDomain) -> bool:
    """Pull the plug; False if the domain was not running."""
    try:
        dom.destroy()
        return True
    except libvirt.libvirtError as exc:
        if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:
            raise
        return False


class Undefiner:
    """Undefines domains with every flag this libvirt accepts (learnt once, then kept)."""

    def __init__(self) -> None:
        self.flags = UNDEFINE_FLAGS

    def undefine(self, dom: libvirt.virDomain) -> None:
        flags = self.flags
        for drop in (0, *_UNDEFINE_FALLBACK):
            flags &= ~drop
            try:
                dom.undefineFlags(flags)
                self.flags = flags  # remember what this libvirt accepts
                return
            except libvirt.libvirtError as exc:
                if _code(exc) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                    raise
                LOG.info("libvirt refused undefine flags %#x (%s); retrying without %#x",
                         flags, exc.get_error_message(), drop)
        dom.undefine()

    def remove(self, connection: Connection, conn: libvirt.virConnect, uuid: str, *,
               read_definition: bool = True) -> str | None:
        """Stop and undefine the domain; its last XML ("" unless `read_definition`), or
        None if there was none."""
        dom = connection.lookup(conn, uuid)
        if dom is None:
            return None
        try:
            definition: str = dom.XMLDesc(0) if read_definition else ""
            destroy(dom)
            self.undefine(dom)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return None  # gone meanwhile (or a kept handle outlived it): nothing to remove
        finally:
            connection.forget(uuid)
        return definition
