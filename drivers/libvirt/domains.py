"""Which domains are virtkit's, and removing one: stop it, undefine it with what this
libvirt accepts, forget its handle.

A domain is virtkit's when its definition holds virtkit's `<metadata>` element (the
`xml.VIRTKIT_NS` namespace, written by every spawn); a domain someone else made on the same
libvirt has none, and the driver never lists, counts or removes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import libvirt

from drivers.libvirt import xml
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


def has_virtkit_metadata(dom: libvirt.virDomain) -> bool | None:
    """Whether the domain's definition holds virtkit's metadata element (one libvirt call);
    None if the domain is gone."""
    try:
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml.VIRTKIT_NS, 0)
        return True
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return False
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _raw(uuid: str) -> bytes:
    """The 16 bytes of a UUID's text (hex digits and dashes): what `virDomain.UUID()` gives,
    at a tenth of `uuid.UUID(...).bytes`."""
    return bytes.fromhex(uuid.replace("-", ""))


class Ownership:
    """Which domains are virtkit's: each domain's metadata is read once and the verdict kept
    by its UUID (a domain's UUID and its metadata namespace do not change), so a listing
    costs one libvirt call however many domains there are.

    Verdicts are kept under the UUID's text (lookups by instance) and its 16 bytes (listings:
    `virDomain.UUID()` costs half of `UUIDString()`). A verdict is dropped when the domain
    is removed or undefined (`forget`), and complete listings drop those of domains no
    longer there; a domain this driver defines is `claim`ed.
    """

    #: Verdicts of domains no longer listed are dropped once there are this many more.
    SLACK = 64

    def __init__(self) -> None:
        self._verdicts: dict[str | bytes, bool] = {}

    def _keep(self, uuid: str, raw: bytes, verdict: bool) -> None:
        self._verdicts[uuid] = self._verdicts[raw] = verdict

    def claim(self, uuid: str) -> None:
        """The driver defined this domain: it is virtkit's."""
        self._keep(uuid, _raw(uuid), True)

    def forget(self, uuid: str) -> None:
        self._verdicts.pop(uuid, None)
        with contextlib.suppress(ValueError):
            self._verdicts.pop(_raw(uuid), None)

    def is_ours(self, dom: libvirt.virDomain | None, uuid: str) -> bool:
        """Whether `dom` (whose UUID is `uuid`; None: there is none) is virtkit's."""
        if dom is None:
            return False
        verdict = self._verdicts.get(uuid)
        if verdict is None:
            return self._judge(dom, uuid, dom.UUID())
        return verdict

    def _judge(self, dom: libvirt.virDomain, uuid: str, raw: bytes) -> bool:
        found = has_virtkit_metadata(dom)
        if found is None:
            return False  # gone meanwhile: nobody's, and no verdict to keep
        self._keep(uuid, raw, found)
        return found

    def ours(self, domains: Sequence[libvirt.virDomain], *, every: bool = True
             ) -> list[libvirt.virDomain]:
        """Those of `domains` that are virtkit's, in their order. `every`: they are all the
        domains there are (verdicts of others may be dropped)."""
        verdicts = self._verdicts
        if every and len(verdicts) > 2 * (len(domains) + self.SLACK):
            present: set[str | bytes] = {d.UUID() for d in domains}
            present |= {d.UUIDString() for d in domains}
            self._verdicts = verdicts = {k: v for k, v in verdicts.items() if k in present}
        known = verdicts.get
        return [d for d in domains
                if (verdict := known(raw := d.UUID()))
                or (verdict is None and self._judge(d, d.UUIDString(), raw))]


class Undefiner:
    """Undefines domains with every flag this libvirt accepts (learnt once, then kept);
    never one that is not virtkit's (`ownership`)."""

    def __init__(self, ownership: Ownership | None = None) -> None:
        self.flags = UNDEFINE_FLAGS
        self.ownership = ownership or Ownership()

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
        None if there was none or it is not virtkit's (then it is left as it is)."""
        dom = connection.lookup(conn, uuid)
        if dom is None:
            return None
        if not self.ownership.is_ours(dom, uuid):
            LOG.warning("domain %s was not made by virtkit: not removing it", uuid)
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
            self.ownership.forget(uuid)
        return definition
