"""One simulated XAPI pool of one host: the database, the messages, the starting objects.

A fresh core holds what an XCP-ng install has: a pool whose master is the host, the host with
its host_metrics and CPUs' info, dom0 (Running, `is_control_domain`), a local `ext` SR (the
pool's default SR, with a plugged PBD), an ISO SR, and `xenbr0` with its PIF `eth0`. No
suspend SR unless `suspend_sr=True`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from guest_agent.wire import XenstoreError

from . import schema
from .db import Db, now_iso
from .errors import XapiError
from .events import Events
from .faults import Faults
from .plugins import DomainStore, Plugins
from .rpc import Api
from .storage import Storage
from .vm import Vms

GiB = 1024**3
HOST_MEMORY = 16 * GiB
DOM0_MEMORY = 1 * GiB
LOCAL_SR_SIZE = 200 * GiB


class Core:
    """The simulator without its HTTP front; `api.call(method, params)` serves a message."""

    def __init__(self, *, user: str = "root", password: str, xenstore: str | None = None,
                 suspend_sr: bool = False, host_memory: int = HOST_MEMORY,
                 first_domid: int = 1) -> None:
        self.db = Db()
        self.faults = Faults()
        self.api = Api(self.db, self.faults, user=user, password=password)
        self.domains: DomainStore | None = DomainStore(xenstore) if xenstore else None
        self._domid = first_domid - 1
        self._domid_lock = threading.Lock()
        self.host_memory = host_memory
        self.vms = Vms(self)
        self.storage = Storage(self)
        self.events = Events(self)
        self.plugins = Plugins(self)
        self._generic_destroy()
        self.api.register("host.compute_free_memory", self._free_memory, 1)
        self.api.register("pool.get_default_SR", lambda p: self.db.get("pool", p)["default_SR"], 1)
        self.api.register("message.create", self._message_create, 5)
        self.api.register("network.create", self._network_create, 1)
        self._control()
        self.host_ref = self.api.host_ref = self._bootstrap(suspend_sr)

    def close(self) -> None:
        if self.domains is not None:
            self.domains.close()

    # -- the starting objects --------------------------------------------------------------

    def _bootstrap(self, suspend_sr: bool) -> str:
        db = self.db
        metrics = db.add("host_metrics", {"memory_total": str(self.host_memory),
                                          "memory_free": str(self.host_memory - DOM0_MEMORY),
                                          "last_updated": now_iso()})
        host = db.add("host", {
            "name_label": "xcp-sim", "hostname": "xcp-sim", "address": "127.0.0.1",
            "software_version": {"product_brand": "XCP-ng", "product_version": "8.3.0",
                                 "platform_name": "XCP", "xen": "4.17.4", "xapi": "24.19"},
            "cpu_info": {"cpu_count": "8", "socket_count": "1", "vendor": "GenuineIntel",
                         "modelname": "Simulated CPU", "speed": "2400.000", "flags": "fpu vme"},
            "metrics": metrics, "memory_overhead": str(DOM0_MEMORY // 16),
            "iscsi_iqn": "iqn.2026-01.org.xcp-sim:host", "other_config": {
                "iscsi_iqn": "iqn.2026-01.org.xcp-sim:host"},
            "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64"],
        })
        self.host_ref = host
        dom0 = self.vms._insert({
            "name_label": "Control domain on host: xcp-sim", "memory_static_max": str(DOM0_MEMORY),
            "memory_dynamic_max": str(DOM0_MEMORY), "memory_dynamic_min": str(DOM0_MEMORY),
            "VCPUs_max": "8", "VCPUs_at_startup": "8",
        })
        db.update("VM", dom0, is_control_domain=True)
        self.vms.set_state(dom0, "Running", domid="0", resident_on=host)
        db.update("host", host, control_domain=dom0, resident_VMs=[dom0])
        local = self.storage.add_sr("Local storage", "ext", LOCAL_SR_SIZE,
                                    other_config={"i18n-key": "local-storage"})
        iso = self.storage.add_sr("XCP-ng Tools", "iso", 0, content_type="iso",
                                  other_config={"i18n-key": "local-storage-iso"})
        for sr in (local, iso):
            pbd = self.storage.pbd_create({"host": host, "SR": sr, "device_config": {}})
            self.storage.pbd_plug(pbd)
        pool = db.add("pool", {"master": host, "default_SR": local})
        if suspend_sr:
            db.update("pool", pool, suspend_image_SR=local)
            db.update("host", host, suspend_image_sr=local)
        network = db.add("network", {"name_label": "Pool-wide network associated with eth0",
                                     "bridge": "xenbr0"})
        pif = db.add("PIF", {"device": "eth0", "network": network, "host": host,
                             "MAC": "02:00:00:00:00:01"})
        db.link("network", network, "PIFs", pif)
        db.link("host", host, "PIFs", pif)
        return host

    def _control(self) -> None:
        """`simulator.*`: not XAPI; what a test drives an out-of-process simulator with."""
        reg, faults = self.api.register, self.faults

        def void(action: Callable[..., None]) -> Callable[..., str]:
            return lambda *args: action(*args) or ""  # type: ignore[func-returns-value]

        reg("simulator.add_iscsi_target", self._add_target, 5)
        reg("simulator.fail", void(lambda m, details, n: faults.fail(
            str(m), *map(str, details), times=int(n))), 3)
        reg("simulator.drop", void(lambda m, after, n: faults.drop(
            str(m), after=bool(after), times=int(n))), 3)
        reg("simulator.slow", void(lambda m, secs, n: faults.slow(
            str(m), float(secs), times=int(n))), 3)
        reg("simulator.clear_faults", void(faults.clear), 0)

    def _add_target(self, portal: Any, iqn: Any, luns: Any, chap_user: Any,
                    chap_password: Any) -> str:  # fmt: skip
        if not isinstance(luns, dict):
            raise XapiError("FIELD_TYPE_ERROR", "luns")
        chap = (str(chap_user), str(chap_password)) if chap_user else None
        self.storage.add_iscsi_target(str(portal), str(iqn),
                                      {int(k): int(v) for k, v in luns.items()}, chap)
        return ""

    def _generic_destroy(self) -> None:
        for cls in ("task", "message", "network"):
            self.api.register(f"{cls}.destroy", lambda r, cls=cls: self._destroy(cls, r), 1)

    def _destroy(self, cls: str, ref: Any) -> str:
        rec = self.db.get(cls, ref)
        if cls == "network" and rec["VIFs"]:
            raise XapiError("NETWORK_CONTAINS_VIF", ",".join(rec["VIFs"]))
        if cls == "network" and rec["PIFs"]:
            raise XapiError("NETWORK_CONTAINS_PIF", ",".join(rec["PIFs"]))
        self.db.delete(cls, ref)
        return ""

    def _network_create(self, record: Any) -> str:
        fields = self.api.build("network", record)
        if not fields.get("bridge"):
            fields["bridge"] = f"xapi{len(self.db.tables['network'])}"
        return self.db.add("network", fields)

    def _message_create(self, name: Any, priority: Any, cls: Any, obj_uuid: Any,
                        body: Any) -> str:  # fmt: skip
        return self.db.add("message", {"name": str(name), "priority": str(int(priority)),
                                       "cls": str(cls), "obj_uuid": str(obj_uuid),
                                       "body": str(body), "timestamp": now_iso()})

    # -- resources -------------------------------------------------------------------------

    def free_memory(self) -> int:
        used = sum(int(rec["memory_static_max"]) for _, rec in
                   self.db.find("VM", lambda r: r["power_state"] in ("Running", "Paused")))
        return self.host_memory - used

    def _free_memory(self, host: Any) -> str:
        self.db.get("host", host)
        return str(self.free_memory())

    def sync_metrics(self) -> None:
        metrics = self.db.get("host", self.host_ref)["metrics"]
        self.db.update("host_metrics", metrics, memory_free=str(self.free_memory()),
                       last_updated=now_iso())

    def next_domid(self) -> int:
        with self._domid_lock:
            self._domid += 1
            return self._domid

    def suspend_sr(self, vm: dict[str, Any]) -> str:
        """Where a suspend image goes: the VM's suspend_SR, the pool's, or the host's."""
        pool = next(iter(self.db.tables["pool"].values()))
        host = self.db.get("host", self.host_ref)
        for sr in (vm["suspend_SR"], pool["suspend_image_SR"], host["suspend_image_sr"]):
            if self.db.exists("SR", sr):
                return str(sr)
        return schema.NULL_REF

    # -- domains ---------------------------------------------------------------------------

    def domain_started(self, domid: int, vm: dict[str, Any]) -> None:
        """Write the new domain's Xen store tree (before the VM's state changes)."""
        if self.domains is None:
            return
        try:
            self.domains.create(domid, vm["name_label"], vm["xenstore_data"])
        except XenstoreError as err:
            try:
                self.domains.release(domid)
            except XenstoreError:
                pass
            raise XapiError("INTERNAL_ERROR", f"xenstore: {err.name}") from None

    def domain_stopped(self, domid: int) -> None:
        if self.domains is not None and domid > 0:
            self.domains.release(domid)

