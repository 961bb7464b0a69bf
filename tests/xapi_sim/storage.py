"""SR, PBD, VDI and secret messages, with a small iSCSI back end.

VDI.clone is copy-on-write (the clone shares its parent's blocks: `bytes_copied` does not
grow), VDI.copy copies. iSCSI SRs (`lvmoiscsi`, `iscsi`) plug only against a target the test
registered with `add_iscsi_target`, logging in with `chapuser` and the password of the secret
named by `chappassword_secret` (or a plain `chappassword`); a failed login is
SR_BACKEND_FAILURE_68, an unknown target SR_BACKEND_FAILURE_141.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import schema
from .db import now_iso
from .errors import XapiError

if TYPE_CHECKING:
    from .core import Core

NULL = schema.NULL_REF
SR_TYPES = {"lvm", "ext", "nfs", "lvmoiscsi", "iscsi", "iso", "udev", "file", "dummy"}
COW_TYPES = {"ext", "nfs", "lvm", "lvmoiscsi", "file", "dummy"}
ISCSI_TYPES = {"lvmoiscsi", "iscsi"}


@dataclass
class IscsiTarget:
    """A target the simulated host can log in to; `luns` maps LUN number to size in bytes."""

    portal: str
    iqn: str
    luns: dict[int, int]
    chap: tuple[str, str] | None = None
    vdi_uuids: dict[int, str] = field(default_factory=dict)


class Storage:
    """The storage messages of one simulator."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.db = core.db
        self.targets: dict[tuple[str, str], IscsiTarget] = {}
        self.bytes_copied = 0
        reg = core.api.register
        reg("SR.create", self.sr_create, 9, asyncable=True)
        reg("SR.introduce", self.sr_introduce, 7, asyncable=True)
        reg("SR.forget", lambda sr: self.sr_remove(sr, "forget"), 1, asyncable=True)
        reg("SR.destroy", lambda sr: self.sr_remove(sr, "destroy"), 1, asyncable=True)
        reg("SR.scan", self.sr_scan, 1, asyncable=True)
        reg("PBD.create", self.pbd_create, 1, asyncable=True)
        reg("PBD.plug", self.pbd_plug, 1, asyncable=True)
        reg("PBD.unplug", self.pbd_unplug, 1, asyncable=True)
        reg("PBD.destroy", self.pbd_destroy, 1, asyncable=True)
        reg("VDI.create", self.vdi_create, 1, asyncable=True)
        reg("VDI.destroy", lambda v: self.vdi_remove(v, "destroy"), 1, asyncable=True)
        reg("VDI.forget", lambda v: self.vdi_remove(v, "forget"), 1, asyncable=True)
        reg("VDI.clone", lambda v, params: self.duplicate_vdi(v, "clone"), 2, asyncable=True)
        reg("VDI.snapshot", lambda v, params: self.duplicate_vdi(v, "snapshot"), 2,
            asyncable=True)
        reg("VDI.copy", lambda v, sr, *rest: self.duplicate_vdi(v, "copy", sr), 2, 4,
            asyncable=True)
        reg("VDI.resize", lambda v, size: self.vdi_resize(v, size, online=False), 2,
            asyncable=True)
        reg("VDI.resize_online", lambda v, size: self.vdi_resize(v, size, online=True), 2,
            asyncable=True)
        reg("VDI.introduce", self.vdi_introduce, 11, 18, asyncable=True)
        reg("secret.create", self.secret_create, 1)
        reg("secret.destroy", lambda s: self._destroy_plain("secret", s), 1)

    def add_iscsi_target(self, portal: str, iqn: str, luns: dict[int, int],
                         chap: tuple[str, str] | None = None) -> IscsiTarget:  # fmt: skip
        """Make a target reachable from the simulated host."""
        target = IscsiTarget(portal, iqn, dict(luns), chap)
        self.targets[(portal, iqn)] = target
        return target

    # -- SR --------------------------------------------------------------------------------

    def add_sr(self, name: str, sr_type: str, size: int, *, content_type: str = "user",
               shared: bool = False, uuid: str | None = None, **extra: Any) -> str:
        """An SR record (no PBD)."""
        if sr_type not in SR_TYPES:
            raise XapiError("SR_UNKNOWN_DRIVER", sr_type)
        fields = {"name_label": name, "type": sr_type, "content_type": content_type,
                  "shared": shared, "physical_size": str(size), **extra}
        if uuid:
            if any(rec["uuid"] == uuid for _, rec in self.db.find("SR")):
                raise XapiError("SR_UUID_EXISTS", uuid)
            fields["uuid"] = uuid
        return self.db.add("SR", fields)

    def sr_create(self, host: Any, device_config: Any, size: Any, name: Any, desc: Any,
                  sr_type: Any, content_type: Any, shared: Any, sm_config: Any) -> str:
        self.db.get("host", host)
        sr = self.add_sr(str(name), str(sr_type), int(size or 0), content_type=str(content_type),
                         shared=bool(shared), name_description=str(desc),
                         sm_config=dict(sm_config))
        pbd = self.pbd_create({"host": host, "SR": sr, "device_config": device_config})
        try:
            self.pbd_plug(pbd)
        except XapiError:
            self.pbd_destroy(pbd)
            self.db.delete("SR", sr)
            raise
        return sr

    def sr_introduce(self, uuid: Any, name: Any, desc: Any, sr_type: Any, content_type: Any,
                     shared: Any, sm_config: Any) -> str:
        return self.add_sr(str(name), str(sr_type), 0, content_type=str(content_type),
                           shared=bool(shared), uuid=str(uuid), name_description=str(desc),
                           sm_config=dict(sm_config))

    def sr_remove(self, sr: Any, how: str) -> str:
        rec = self.db.get("SR", sr)
        for pbd in rec["PBDs"]:
            if self.db.get("PBD", pbd)["currently_attached"]:
                raise XapiError("SR_HAS_PBD", sr)
        for vdi in rec["VDIs"]:
            if self.db.get("VDI", vdi)["VBDs"]:
                raise XapiError("VDI_IN_USE", vdi, how)
        for pbd in list(rec["PBDs"]):
            self.pbd_destroy(pbd)
        for vdi in list(rec["VDIs"]):
            self.db.delete("VDI", vdi)
        self.db.delete("SR", sr)
        return ""

    def sr_scan(self, sr: Any) -> str:
        rec = self.db.get("SR", sr)
        if not self._plugged(rec):
            raise XapiError("SR_HAS_NO_PBDS", sr)
        if rec["type"] in ISCSI_TYPES:
            pbd = next(p for p in rec["PBDs"] if self.db.get("PBD", p)["currently_attached"])
            self._lun_vdis(sr, self._login(self.db.get("PBD", pbd)["device_config"]))
        return ""

    def _plugged(self, rec: dict[str, Any]) -> bool:
        return any(self.db.get("PBD", p)["currently_attached"] for p in rec["PBDs"])

    # -- PBD -------------------------------------------------------------------------------

    def pbd_create(self, record: Any) -> str:
        fields = self.core.api.build("PBD", record)
        self.db.get("host", fields["host"])
        self.db.get("SR", fields["SR"])
        ref = self.db.add("PBD", fields)
        self.db.link("SR", fields["SR"], "PBDs", ref)
        self.db.link("host", fields["host"], "PBDs", ref)
        return ref

    def pbd_plug(self, pbd: Any) -> str:
        rec = self.db.get("PBD", pbd)
        if rec["currently_attached"]:
            return ""
        sr = self.db.get("SR", rec["SR"])
        if sr["type"] in ISCSI_TYPES:
            target = self._login(rec["device_config"])
            sr["physical_size"] = str(sum(target.luns.values()))
            self._lun_vdis(rec["SR"], target)
        self.db.update("PBD", pbd, currently_attached=True)
        return ""

    def pbd_unplug(self, pbd: Any) -> str:
        rec = self.db.get("PBD", pbd)
        for vdi in self.db.get("SR", rec["SR"])["VDIs"]:
            for vbd in self.db.get("VDI", vdi)["VBDs"]:
                if self.db.get("VBD", vbd)["currently_attached"]:
                    raise XapiError("VDI_IN_USE", vdi, "unplug")
        self.db.update("PBD", pbd, currently_attached=False)
        return ""

    def pbd_destroy(self, pbd: Any) -> str:
        rec = self.db.get("PBD", pbd)
        if rec["currently_attached"]:
            raise XapiError("OPERATION_NOT_ALLOWED", f"PBD {pbd} is currently attached")
        self.db.unlink("SR", rec["SR"], "PBDs", pbd)
        self.db.unlink("host", rec["host"], "PBDs", pbd)
        self.db.delete("PBD", pbd)
        return ""

    def _login(self, config: dict[str, str]) -> IscsiTarget:
        portal = f"{config.get('target', '')}:{config.get('port', '3260')}"
        target = self.targets.get((portal, config.get("targetIQN", "")))
        if target is None:
            raise XapiError("SR_BACKEND_FAILURE_141", "", "Unable to connect to iSCSI service on target", "")
        if target.chap is not None:
            password = config.get("chappassword")
            if "chappassword_secret" in config:
                ref = self.db.by_uuid("secret", config["chappassword_secret"])
                password = self.db.get("secret", ref)["value"]
            if (config.get("chapuser"), password) != target.chap:
                raise XapiError("SR_BACKEND_FAILURE_68", "", "ISCSILogin error", "")
        return target

    def _lun_vdis(self, sr: str, target: IscsiTarget) -> None:
        known = {rec["sm_config"].get("LUNid"): ref for ref, rec in
                 ((v, self.db.get("VDI", v)) for v in self.db.get("SR", sr)["VDIs"])}
        for lun, size in sorted(target.luns.items()):
            if str(lun) in known:
                continue
            fields: dict[str, Any] = {"sm_config": {"LUNid": str(lun)}}
            if lun in target.vdi_uuids:
                fields["uuid"] = target.vdi_uuids[lun]
            vdi = self.new_vdi(sr, f"LUN {lun}", str(size), "user", **fields)
            target.vdi_uuids[lun] = self.db.get("VDI", vdi)["uuid"]

    # -- VDI -------------------------------------------------------------------------------

    def new_vdi(self, sr: str, name: str, size: str, vdi_type: str, **fields: Any) -> str:
        """A VDI in `sr`, accounted in the SR's allocation (SR_FULL if it does not fit)."""
        rec = self.db.get("SR", sr)
        if rec["type"] not in ISCSI_TYPES and rec["content_type"] != "iso":
            needed = int(rec["virtual_allocation"]) + int(size)
            if int(rec["physical_size"]) and needed > int(rec["physical_size"]):
                raise XapiError("SR_FULL", str(size), rec["physical_size"])
            rec["virtual_allocation"] = str(needed)
        used = fields.pop("physical_utilisation", size)
        rec["physical_utilisation"] = str(int(rec["physical_utilisation"]) + int(used))
        ref = self.db.add("VDI", {"name_label": name, "SR": sr, "virtual_size": str(size),
                                  "type": vdi_type, "physical_utilisation": str(used),
                                  "location": "", **fields})
        self.db.update("VDI", ref, location=self.db.get("VDI", ref)["uuid"])
        self.db.link("SR", sr, "VDIs", ref)
        return ref

    def vdi_create(self, record: Any) -> str:
        fields = self.core.api.build("VDI", record)
        sr = self.db.get("SR", fields["SR"])
        if sr["content_type"] == "iso" or sr["type"] in ISCSI_TYPES:
            raise XapiError("SR_OPERATION_NOT_SUPPORTED", fields["SR"])
        if int(fields["virtual_size"]) < 0:
            raise XapiError("VALUE_NOT_SUPPORTED", "virtual_size", fields["virtual_size"], "")
        return self.new_vdi(fields.pop("SR"), fields.pop("name_label"),
                            fields.pop("virtual_size"), fields.pop("type"), **fields)

    def remove_vdi(self, vdi: str) -> None:
        rec = self.db.get("VDI", vdi)
        sr = self.db.get("SR", rec["SR"])
        if sr["type"] not in ISCSI_TYPES and sr["content_type"] != "iso":
            sr["virtual_allocation"] = str(max(0, int(sr["virtual_allocation"])
                                                - int(rec["virtual_size"])))
        sr["physical_utilisation"] = str(max(0, int(sr["physical_utilisation"])
                                              - int(rec["physical_utilisation"])))
        for vbd in list(rec["VBDs"]):
            self.core.vms._dev_destroy("VBD", vbd, checked=False)
        self.db.unlink("SR", rec["SR"], "VDIs", vdi)
        self.db.unlink("VDI", rec["snapshot_of"], "snapshots", vdi)
        self.db.delete("VDI", vdi)

    def vdi_remove(self, vdi: Any, how: str) -> str:
        rec = self.db.get("VDI", vdi)
        if any(self.db.get("VBD", v)["currently_attached"] for v in rec["VBDs"]):
            raise XapiError("VDI_IN_USE", vdi, how)
        self.remove_vdi(vdi)
        return ""

    def check_attachable(self, vdi: str, vbd: str, mode: str) -> None:
        """VDI_IN_USE if another plugged VBD writes to a non-sharable VDI."""
        rec = self.db.get("VDI", vdi)
        if not self._plugged(self.db.get("SR", rec["SR"])):
            raise XapiError("SR_HAS_NO_PBDS", rec["SR"])
        if rec["sharable"]:
            return
        for other in rec["VBDs"]:
            orec = self.db.get("VBD", other)
            if other != vbd and orec["currently_attached"] and "RW" in (mode, orec["mode"]):
                raise XapiError("VDI_IN_USE", vdi, "attach")

    def duplicate_vdi(self, vdi: Any, how: str, sr: Any = NULL) -> str:
        """clone/snapshot: copy-on-write in the same SR; copy: a full copy into `sr`."""
        rec = self.db.get("VDI", vdi)
        target = rec["SR"] if sr in (NULL, "", None) else sr
        tsr = self.db.get("SR", target)
        if how != "copy" and tsr["type"] not in COW_TYPES:
            raise XapiError("SR_OPERATION_NOT_SUPPORTED", target)
        keep = {f.name for f in schema.CLASSES["VDI"].values() if f.access != "ro"}
        fields = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                  for k, v in rec.items() if k in keep and k not in ("SR", "name_label",
                                                                      "virtual_size", "type")}
        if how == "copy":  # a full, flattened copy: every block of the disk
            used = rec["virtual_size"]
            self.bytes_copied += int(used)
        else:
            used = "0"
            fields["sm_config"] = dict(fields.get("sm_config", {}), **{"vhd-parent": rec["uuid"]})
        new = self.new_vdi(target, rec["name_label"], rec["virtual_size"], rec["type"],
                           physical_utilisation=used, **fields)
        if how == "snapshot":
            self.db.update("VDI", new, is_a_snapshot=True, snapshot_of=vdi,
                           snapshot_time=now_iso())
            self.db.link("VDI", vdi, "snapshots", new)
        return new

    def vdi_resize(self, vdi: Any, size: Any, *, online: bool) -> str:
        rec = self.db.get("VDI", vdi)
        attached = any(self.db.get("VBD", v)["currently_attached"] for v in rec["VBDs"])
        if attached != online:
            raise XapiError("VDI_IN_USE" if attached else "VDI_NOT_IN_MAP", vdi, "resize")
        new = int(schema.normalize("VDI", schema.CLASSES["VDI"]["virtual_size"], size))
        if new < int(rec["virtual_size"]):
            raise XapiError("VDI_TOO_SMALL", vdi, str(new), rec["virtual_size"])
        sr = self.db.get("SR", rec["SR"])
        grow = new - int(rec["virtual_size"])
        if int(sr["physical_size"]) and int(sr["virtual_allocation"]) + grow > int(sr["physical_size"]):
            raise XapiError("SR_FULL", str(grow), sr["physical_size"])
        sr["virtual_allocation"] = str(int(sr["virtual_allocation"]) + grow)
        self.db.update("VDI", vdi, virtual_size=str(new))
        return ""

    def vdi_introduce(self, uuid: Any, name: Any, desc: Any, sr: Any, vdi_type: Any,
                      sharable: Any, read_only: Any, other_config: Any, location: Any,
                      xenstore_data: Any, sm_config: Any, *rest: Any) -> str:
        self.db.get("SR", sr)
        if any(rec["uuid"] == uuid for _, rec in self.db.find("VDI")):
            raise XapiError("DUPLICATE_VDI", uuid)
        field = schema.CLASSES["VDI"]["type"]
        return self.new_vdi(sr, str(name), "0", schema.normalize("VDI", field, vdi_type),
                            uuid=str(uuid), name_description=str(desc), sharable=bool(sharable),
                            read_only=bool(read_only), other_config=dict(other_config),
                            xenstore_data=dict(xenstore_data), sm_config=dict(sm_config),
                            physical_utilisation="0")

    # -- secret ----------------------------------------------------------------------------

    def secret_create(self, record: Any) -> str:
        return self.db.add("secret", self.core.api.build("secret", record))

    def _destroy_plain(self, cls: str, ref: Any) -> str:
        self.db.get(cls, ref)
        self.db.delete(cls, ref)
        return ""
