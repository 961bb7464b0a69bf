"""VM lifecycle (research §4.4), VBD and VIF create/plug/unplug.

Power-state rules follow `xapi_vm_lifecycle.allowed_power_states`; a violation is
VM_BAD_POWER_STATE [vm, expected, actual]. Start plugs every VBD and VIF, gives the VM a fresh
domid (and a Xen store tree when the simulator has one); shutdown unplugs them and frees it.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from . import schema
from .db import now_iso
from .errors import XapiError, bad_power_state

if TYPE_CHECKING:
    from .core import Core

NULL = schema.NULL_REF
ALLOWED: dict[str, tuple[str, ...]] = {
    "start": ("Halted",), "start_on": ("Halted",), "provision": ("Halted",),
    "clean_shutdown": ("Running",), "clean_reboot": ("Running",), "pause": ("Running",),
    "suspend": ("Running",), "pool_migrate": ("Running",), "unpause": ("Paused",),
    "resume": ("Suspended",), "resume_on": ("Suspended",),
    "hard_shutdown": ("Paused", "Suspended", "Running"),
    "shutdown": ("Paused", "Suspended", "Running"),
    "hard_reboot": ("Paused", "Running"),
    "clone": ("Halted",), "copy": ("Halted",),  # + Suspended for snapshots
    "destroy": ("Halted", "Suspended"), "export": ("Halted", "Suspended"),
    "snapshot": ("Halted", "Paused", "Suspended", "Running"),
    "set_memory_dynamic_range": ("Halted", "Running"),
}
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Vms:
    """The VM, VBD and VIF messages of one simulator."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.db = core.db
        reg = core.api.register
        reg("VM.create", self.create, 1, asyncable=True)
        reg("VM.destroy", self.destroy, 1, asyncable=True)
        reg("VM.clone", lambda vm, name: self.clone(vm, name, "clone"), 2, asyncable=True)
        reg("VM.copy", lambda vm, name, sr: self.clone(vm, name, "copy", sr), 3, asyncable=True)
        reg("VM.snapshot", self.snapshot, 2, 3, asyncable=True)
        reg("VM.start", lambda vm, paused, force: self.start(vm, paused, "start"), 3,
            asyncable=True)
        reg("VM.start_on", self.start_on, 4, asyncable=True)
        for op in ("clean_shutdown", "hard_shutdown", "shutdown"):
            reg(f"VM.{op}", lambda vm, op=op: self.halt(vm, op), 1, asyncable=True)
        for op in ("clean_reboot", "hard_reboot"):
            reg(f"VM.{op}", lambda vm, op=op: self.reboot(vm, op), 1, asyncable=True)
        reg("VM.pause", lambda vm: self._switch(vm, "pause", "Paused"), 1, asyncable=True)
        reg("VM.unpause", lambda vm: self._switch(vm, "unpause", "Running"), 1, asyncable=True)
        reg("VM.suspend", self.suspend, 1, asyncable=True)
        reg("VM.resume", lambda vm, paused, force: self.resume(vm, paused), 3, asyncable=True)
        reg("VM.resume_on", lambda vm, host, paused, force: self.resume(vm, paused, host), 4,
            asyncable=True)
        reg("VM.set_memory_dynamic_range", self.set_memory_dynamic_range, 3, asyncable=True)
        reg("VBD.create", self.vbd_create, 1, asyncable=True)
        reg("VBD.destroy", lambda r: self._dev_destroy("VBD", r), 1, asyncable=True)
        reg("VBD.plug", lambda r: self._plug("VBD", r, True), 1, asyncable=True)
        reg("VBD.unplug", lambda r: self._plug("VBD", r, False), 1, asyncable=True)
        reg("VBD.unplug_force", lambda r: self._plug("VBD", r, False, force=True), 1,
            asyncable=True)
        reg("VIF.create", self.vif_create, 1, asyncable=True)
        reg("VIF.destroy", lambda r: self._dev_destroy("VIF", r), 1, asyncable=True)
        reg("VIF.plug", lambda r: self._plug("VIF", r, True), 1, asyncable=True)
        reg("VIF.unplug", lambda r: self._plug("VIF", r, False), 1, asyncable=True)

    # -- checks ----------------------------------------------------------------------------

    def vm(self, ref: Any) -> dict[str, Any]:
        return self.db.get("VM", ref)

    def check(self, ref: Any, op: str) -> dict[str, Any]:
        """The VM record if `op` is allowed in its power state (and on what it is)."""
        rec = self.vm(ref)
        if rec["is_control_domain"] and op not in ("snapshot",):
            raise XapiError("OPERATION_NOT_ALLOWED", f"{op} on the control domain")
        if rec["is_a_template"] and op in ("start", "start_on", "resume", "resume_on"):
            raise XapiError("VM_IS_TEMPLATE", ref)
        allowed = ALLOWED[op]
        if op in ("clone", "copy") and rec["is_a_snapshot"]:
            allowed = ("Halted", "Suspended")
        if rec["power_state"] not in allowed:
            raise bad_power_state(ref, list(allowed), rec["power_state"])
        blocked = rec["blocked_operations"].get(op)
        if blocked is not None:
            raise XapiError("OPERATION_BLOCKED", ref, blocked)
        return rec

    def set_state(self, ref: str, state: str, **fields: Any) -> None:
        rec = self.vm(ref)
        rec.update(fields, power_state=state)
        rec["allowed_operations"] = sorted(op for op, ok in ALLOWED.items() if state in ok)
        self.db.modified("VM", ref)

    # -- create / destroy / clone ----------------------------------------------------------

    def create(self, record: Any) -> str:
        fields = self.core.api.build("VM", record)
        _check_memory(fields)
        vcpus_max, at_start = int(fields["VCPUs_max"]), int(fields["VCPUs_at_startup"])
        if not 0 < at_start <= vcpus_max:
            raise XapiError("VALUE_NOT_SUPPORTED", "VCPUs_at_startup", str(at_start),
                            "must be positive and at most VCPUs_max")
        return self._insert(fields)

    def _insert(self, fields: dict[str, Any]) -> str:
        metrics = self.db.add("VM_metrics", {"memory_actual": "0", "VCPUs_number": "0"})
        fields.update(metrics=metrics, power_state="Halted", domid="-1", resident_on=NULL,
                      memory_target=fields.get("memory_dynamic_max", "0"))
        ref = self.db.add("VM", fields)
        self.set_state(ref, "Halted")
        return ref

    def destroy(self, ref: Any) -> str:
        rec = self.check(ref, "destroy")
        if rec["power_state"] == "Suspended":
            self._drop_suspend_vdi(ref)
        for vbd in list(rec["VBDs"]):
            self._dev_destroy("VBD", vbd, checked=False)
        for vif in list(rec["VIFs"]):
            self._dev_destroy("VIF", vif, checked=False)
        if self.db.exists("VM_metrics", rec["metrics"]):
            self.db.delete("VM_metrics", rec["metrics"])
        self.db.unlink("VM", rec["snapshot_of"], "snapshots", ref)
        self.db.delete("VM", ref)
        return ""

    def clone(self, ref: Any, name: Any, how: str, sr: Any = NULL) -> str:
        self.check(ref, how)
        if how == "copy" and sr != NULL:
            self.db.get("SR", sr)
        new = self._duplicate(ref, str(name), disk_op=how, sr=sr)
        return new

    def snapshot(self, ref: Any, name: Any, ignore_vdis: Any = ()) -> str:
        self.check(ref, "snapshot")
        new = self._duplicate(ref, str(name), disk_op="snapshot", ignore=list(ignore_vdis))
        self.db.update("VM", new, is_a_snapshot=True, is_a_template=True, snapshot_of=ref,
                       snapshot_time=now_iso())
        self.db.link("VM", ref, "snapshots", new)
        return new

    def _duplicate(self, ref: str, name: str, *, disk_op: str, sr: str = NULL,
                   ignore: list[str] | None = None) -> str:  # fmt: skip
        rec = self.vm(ref)
        keep = {f.name for f in schema.CLASSES["VM"].values() if f.access != "ro"}
        fields = {k: _copy(v) for k, v in rec.items() if k in keep}
        fields["name_label"] = name
        new = self._insert(fields)
        storage = self.core.storage
        for vbd_ref in rec["VBDs"]:
            vbd = self.db.get("VBD", vbd_ref)
            vdi = vbd["VDI"]
            if vdi != NULL and vbd["type"] == "Disk" and vdi not in (ignore or []):
                vdi = storage.duplicate_vdi(vdi, disk_op, sr)
            elif vdi in (ignore or []):
                continue
            self._add_vbd({**_device_fields("VBD", vbd), "VM": new, "VDI": vdi})
        for vif_ref in rec["VIFs"]:
            vif = self.db.get("VIF", vif_ref)
            self._add_vif({**_device_fields("VIF", vif), "VM": new})
        return new

    # -- power -----------------------------------------------------------------------------

    def start_on(self, ref: Any, host: Any, paused: Any, force: Any) -> str:
        self.db.get("host", host)
        return self.start(ref, paused, "start_on")

    def start(self, ref: Any, paused: Any, op: str) -> str:
        rec = self.check(ref, op)
        self._check_bootable(ref, rec)
        self._reserve_memory(int(rec["memory_static_max"]))
        self._boot(ref, "Paused" if paused else "Running")
        return ""

    def _check_bootable(self, ref: str, rec: dict[str, Any]) -> None:
        if rec["HVM_boot_policy"]:
            return
        if rec["PV_kernel"]:
            return
        if rec["PV_bootloader"]:
            if not any(self.db.get("VBD", v)["bootable"] for v in rec["VBDs"]):
                raise XapiError("BOOTLOADER_FAILED", ref, "no bootable disk")
            return
        raise XapiError("BOOTLOADER_FAILED", ref, "no PV kernel, bootloader or HVM boot policy")

    def _reserve_memory(self, needed: int) -> None:
        free = self.core.free_memory()
        if needed > free:
            raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", str(needed), str(free))

    def _boot(self, ref: str, state: str) -> None:
        rec = self.vm(ref)
        for vbd in rec["VBDs"]:  # every check before any change: a failed start changes nothing
            vbd_rec = self.db.get("VBD", vbd)
            if vbd_rec["VDI"] != NULL:
                self.core.storage.check_attachable(vbd_rec["VDI"], vbd, vbd_rec["mode"])
        domid = self.core.next_domid()
        self.core.domain_started(domid, rec)
        self.set_state(ref, state, domid=str(domid), resident_on=self.core.host_ref)
        self.db.link("host", self.core.host_ref, "resident_VMs", ref)
        self.db.update("VM_metrics", rec["metrics"], memory_actual=rec["memory_dynamic_max"],
                       VCPUs_number=rec["VCPUs_at_startup"], start_time=now_iso())
        for cls in ("VBD", "VIF"):
            for dev in rec[f"{cls}s"]:
                self._attach(cls, dev, True)
        self.core.sync_metrics()

    def halt(self, ref: Any, op: str) -> str:
        rec = self.check(ref, op)
        if rec["power_state"] == "Suspended":
            self._drop_suspend_vdi(ref)
            for vbd in rec["VBDs"]:
                self._attach("VBD", vbd, False)
            self.set_state(ref, "Halted")
            return ""
        self._down(ref, "Halted")
        return ""

    def _down(self, ref: str, state: str, *, keep_disks: bool = False) -> None:
        rec = self.vm(ref)
        domid = int(rec["domid"])
        for cls in ("VBD", "VIF"):
            for dev in rec[f"{cls}s"]:
                if cls == "VIF" or not keep_disks:
                    self._attach(cls, dev, False)
        self.db.unlink("host", self.core.host_ref, "resident_VMs", ref)
        self.set_state(ref, state, domid="-1", resident_on=NULL)
        self.db.update("VM_metrics", rec["metrics"], memory_actual="0", VCPUs_number="0")
        self.core.sync_metrics()
        self.core.domain_stopped(domid)

    def reboot(self, ref: Any, op: str) -> str:
        self.check(ref, op)
        self._down(ref, "Halted")
        self._boot(ref, "Running")
        return ""

    def _switch(self, ref: Any, op: str, state: str) -> str:
        self.check(ref, op)
        self.set_state(ref, state)
        return ""

    def suspend(self, ref: Any) -> str:
        rec = self.check(ref, "suspend")
        sr = self.core.suspend_sr(rec)
        if sr == NULL:
            raise XapiError("VM_NO_SUSPEND_SR", ref)
        vdi = self.core.storage.new_vdi(sr, f"Suspend image for {rec['name_label']}",
                                        rec["memory_static_max"], "suspend")
        self._down(ref, "Suspended", keep_disks=True)
        self.db.update("VM", ref, suspend_VDI=vdi)
        return ""

    def resume(self, ref: Any, paused: Any, host: Any = None) -> str:
        if host is not None:
            self.db.get("host", host)
        rec = self.check(ref, "resume")
        self._reserve_memory(int(rec["memory_static_max"]))
        self._drop_suspend_vdi(ref)
        self._boot(ref, "Paused" if paused else "Running")
        return ""

    def _drop_suspend_vdi(self, ref: str) -> None:
        rec = self.vm(ref)
        if self.db.exists("VDI", rec["suspend_VDI"]):
            self.core.storage.remove_vdi(rec["suspend_VDI"])
        rec["suspend_VDI"] = NULL
        self.db.modified("VM", ref)

    def set_memory_dynamic_range(self, ref: Any, low: Any, high: Any) -> str:
        rec = self.check(ref, "set_memory_dynamic_range")
        field = schema.CLASSES["VM"]["memory_dynamic_min"]
        fields = dict(rec, memory_dynamic_min=schema.normalize("VM", field, low),
                      memory_dynamic_max=schema.normalize("VM", field, high))
        _check_memory(fields)
        self.db.update("VM", ref, memory_dynamic_min=fields["memory_dynamic_min"],
                       memory_dynamic_max=fields["memory_dynamic_max"])
        return ""

    # -- VBD / VIF -------------------------------------------------------------------------

    def vbd_create(self, record: Any) -> str:
        fields = self.core.api.build("VBD", record)
        vm = self.vm(fields["VM"])
        if fields["VDI"] != NULL:
            self.db.get("VDI", fields["VDI"])
        elif not fields["empty"] or fields["type"] != "CD":
            raise XapiError("VDI_IS_NOT_A_CD" if fields["type"] == "CD" else "FIELD_TYPE_ERROR",
                            "VDI")
        used = {self.db.get("VBD", v)["userdevice"] for v in vm["VBDs"]}
        if fields["userdevice"] == "autodetect":
            fields["userdevice"] = str(next(i for i in range(16) if str(i) not in used))
        elif not fields["userdevice"].isdigit():
            raise XapiError("INVALID_DEVICE", fields["userdevice"])
        elif fields["userdevice"] in used:
            raise XapiError("DEVICE_ALREADY_EXISTS", fields["userdevice"])
        return self._add_vbd(fields)

    def _add_vbd(self, fields: dict[str, Any]) -> str:
        ref = self.db.add("VBD", dict(fields, currently_attached=False, device=""))
        self.db.link("VM", fields["VM"], "VBDs", ref)
        self.db.link("VDI", fields["VDI"], "VBDs", ref)
        return ref

    def vif_create(self, record: Any) -> str:
        fields = self.core.api.build("VIF", record)
        vm = self.vm(fields["VM"])
        self.db.get("network", fields["network"])
        if not fields["device"].isdigit():
            raise XapiError("INVALID_DEVICE", fields["device"])
        if fields["device"] in {self.db.get("VIF", v)["device"] for v in vm["VIFs"]}:
            raise XapiError("DEVICE_ALREADY_EXISTS", fields["device"])
        if fields["MAC"] == "":
            fields["MAC"] = "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))
            fields["MAC_autogenerated"] = True
        elif not _MAC.match(fields["MAC"]):
            raise XapiError("MAC_INVALID", fields["MAC"])
        return self._add_vif(fields)

    def _add_vif(self, fields: dict[str, Any]) -> str:
        ref = self.db.add("VIF", dict(fields, currently_attached=False))
        self.db.link("VM", fields["VM"], "VIFs", ref)
        self.db.link("network", fields["network"], "VIFs", ref)
        return ref

    def _dev_destroy(self, cls: str, ref: Any, *, checked: bool = True) -> str:
        rec = self.db.get(cls, ref)
        if checked and rec["currently_attached"] and self.vm(rec["VM"])["power_state"] != "Halted":
            raise XapiError("OPERATION_NOT_ALLOWED", f"{cls} {ref} is currently attached")
        self.db.unlink("VM", rec["VM"], f"{cls}s", ref)
        other = ("VDI", "VDI") if cls == "VBD" else ("network", "network")
        self.db.unlink(other[0], rec[other[1]], f"{cls}s", ref)
        self.db.delete(cls, ref)
        return ""

    def _plug(self, cls: str, ref: Any, plug: bool, *, force: bool = False) -> str:
        rec = self.db.get(cls, ref)
        vm = self.vm(rec["VM"])
        if vm["power_state"] != "Running":
            raise bad_power_state(rec["VM"], ["Running"], vm["power_state"])
        if plug and rec["currently_attached"]:
            raise XapiError("DEVICE_ALREADY_ATTACHED", ref)
        if not plug and not rec["currently_attached"]:
            raise XapiError("DEVICE_ALREADY_DETACHED", ref)
        if not plug and not force and not rec.get("unpluggable", True):
            raise XapiError("VBD_NOT_UNPLUGGABLE", ref)
        self._attach(cls, ref, plug)
        return ""

    def _attach(self, cls: str, ref: str, plug: bool) -> None:
        rec = self.db.get(cls, ref)
        if cls == "VBD":
            if plug and rec["VDI"] != NULL:
                self.core.storage.check_attachable(rec["VDI"], ref, rec["mode"])
            device = "" if not plug else "xvd" + chr(ord("a") + int(rec["userdevice"]))
            rec["device"] = device
        rec["currently_attached"] = plug
        self.db.modified(cls, ref)


def _check_memory(fields: dict[str, Any]) -> None:
    values = [int(fields[k]) for k in ("memory_static_min", "memory_dynamic_min",
                                       "memory_dynamic_max", "memory_static_max")]
    if values != sorted(values) or values[0] < 0:
        raise XapiError("MEMORY_CONSTRAINT_VIOLATION",
                        "static_min <= dynamic_min <= dynamic_max <= static_max")


def _device_fields(cls: str, rec: dict[str, Any]) -> dict[str, Any]:
    keep = {f.name for f in schema.CLASSES[cls].values() if f.access != "ro"}
    return {k: _copy(v) for k, v in rec.items() if k in keep}


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else (
        list(value) if isinstance(value, list) else value)
