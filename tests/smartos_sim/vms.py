"""The zones of the simulated host: create, boot, halt, delete, update and snapshots.

Every function here runs under the state's lock; the vmadm module turns their results and
SimErrors into the tool's output.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from . import datasets, images, payload
from .fmt import iso_now
from .state import POOL, SimError, State, read_json, write_json

SNAP_PREFIX = "vmsnap-"
SNAP_NAME_RE = re.compile(r"^[A-Za-z0-9\-_.:%]{1,64}$")
PROVISION_DELAY = 0.01  # seconds: create blocks until "provisioning" is over
UPDATABLE = {
    "alias", "hostname", "ram", "max_physical_memory", "max_locked_memory", "max_swap",
    "max_lwps", "tmpfs", "cpu_cap", "cpu_shares", "vcpus", "quota", "zfs_io_priority",
    "owner_uuid", "billing_id", "autoboot", "resolvers", "maintain_resolvers", "nic_driver",
    "disk_driver", "cpu_type", "boot", "vnc_port", "vnc_password", "indestructible_zoneroot",
    "indestructible_delegated", "do_not_inventory", "firewall_enabled", "limit_priv",
    "flexible_disk_size", "zfs_root_compression", "zfs_data_compression", "zfs_root_recsize",
    "zfs_data_recsize", "zfs_snapshot_limit", "zfs_filesystem_limit", "archive_on_delete",
    "internal_metadata_namespaces", "kernel_version", "max_shm_memory", "max_msg_ids",
    "max_sem_ids", "max_shm_ids", "bootrom", "mdata_exec_timeout",
}
MAPS = ("customer_metadata", "internal_metadata", "tags", "routes")
GONE_WHEN_STOPPED = ("boot_timestamp", "pid", "zoneid")


def load(state: State, uuid: str) -> dict[str, Any] | None:
    return read_json(state.vm_path(uuid))


def save(state: State, vm: dict[str, Any]) -> None:
    write_json(state.vm_path(vm["uuid"]), vm)


def require(state: State, uuid: str) -> dict[str, Any]:
    """The zone, or zoneadm's 'No such zone configured' error."""
    vm = load(state, uuid)
    if vm is None:
        raise SimError(f"zoneadm: {uuid}: No such zone configured")
    return vm


def all_vms(state: State) -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(state.vms_dir)):
        if name.endswith(".json"):
            vm = read_json(state.vms_dir / name)
            if vm:
                out.append(vm)
    return out


def zone_root(state: State, uuid: str) -> str:
    """The guest's root directory in the state root (/zones/<uuid>/root)."""
    return str(state.mountpoint(f"{POOL}/{uuid}") / "root")


def view(state: State, db: datasets.DB, vm: dict[str, Any]) -> dict[str, Any]:
    """What `vmadm get` prints: the stored object, the snapshots, no simulator keys."""
    out = {k: v for k, v in vm.items() if not k.startswith("_")}
    snaps = []
    fs = vm["zfs_filesystem"]
    for snap in reversed(datasets.snapshots_of(db, fs)):
        name = snap.partition("@")[2]
        if name.startswith(SNAP_PREFIX):
            size = datasets.referenced(state, db, snap) / (1 << 20)
            snaps.append({"name": name[len(SNAP_PREFIX):], "size": round(size, 3),
                          "created_at": iso_now(db[snap]["creation"])})
    out["snapshots"] = snaps
    return dict(sorted(out.items()))


def list_row(vm: dict[str, Any]) -> dict[str, Any]:
    """The object `vmadm list` filters and prints: type added, OS ram = max_physical_memory."""
    row = dict(vm)
    brand = vm.get("brand", "joyent")
    row["type"] = {"lx": "LX", "kvm": "KVM", "bhyve": "BHYV"}.get(brand, "OS")
    if brand not in payload.HVM:
        row["ram"] = vm.get("max_physical_memory")
    return row


def _now() -> str:
    return iso_now(time.time())


def boot(state: State, vm: dict[str, Any]) -> None:
    """The zone runs: a new boot (timestamp, pid, zone id)."""
    vm.update(state="running", zone_state="running", boot_timestamp=_now(),
              pid=1000 + state.next_counter("pid"), zoneid=state.next_counter("zoneid"))
    sim = vm.setdefault("_sim", {})
    sim["boots"] = int(sim.get("boots", 0)) + 1
    vm.pop("exit_status", None)
    vm.pop("exit_timestamp", None)


def halt(vm: dict[str, Any]) -> None:
    vm.update(state="stopped", zone_state="installed", exit_status=0, exit_timestamp=_now())
    for key in GONE_WHEN_STOPPED:
        vm.pop(key, None)


def _make_datasets(state: State, db: datasets.DB, vm: dict[str, Any]) -> None:
    uuid = vm["uuid"]
    root = f"{POOL}/{uuid}"
    props = {"quota": str(vm["quota"] << 30) if vm["quota"] else "0", "devices": "off"}
    image = vm.get("image_uuid")
    if image:
        source = f"{POOL}/{image}@final"
        if source not in db:
            source = f"{POOL}/{image}@{uuid}"
            datasets.snapshot(state, db, source)
        datasets.clone(state, db, source, root, props)
    else:
        datasets.create_filesystem(state, db, root, props)
    state.mountpoint(root).joinpath("root").mkdir(exist_ok=True)
    for disk in vm.get("disks", []):
        name = disk["zfs_filesystem"]
        size = int(disk["size"]) << 20
        dprops = {"refreservation": str(int(disk["refreservation"]) << 20),
                  "volblocksize": str(disk["block_size"])}
        if disk.get("image_uuid"):
            datasets.clone(state, db, f"{POOL}/{disk['image_uuid']}@final", name,
                           dict(dprops, volsize=str(size)))
        else:
            datasets.create_volume(state, db, name, size, dprops)


def create(state: State, body: Any) -> tuple[dict[str, Any], list[str], str | None]:
    """vmadm create: validate, make the datasets, boot; (vm, warnings, failure reason)."""
    existing = {vm["uuid"] for vm in all_vms(state)}
    vm, warnings = payload.build(body, existing=existing, images=images.manifests(state),
                                 host=state.host(), now=_now())
    db = datasets.load(state)
    before = set(db)
    try:
        _make_datasets(state, db, vm)
    except SimError:
        for name in sorted(set(db) - before, key=len, reverse=True):
            datasets.drop(state, db, name)
        raise
    datasets.save(state, db)
    vm["_sim"] = {"boots": 0}
    failure = None
    if vm["autoboot"]:
        vm.update(state="provisioning", zone_state="running")
        save(state, vm)
        time.sleep(PROVISION_DELAY)
        failure = state.take_provision_fault()
        if failure:
            vm.update(state="failed", zone_state="installed")
        else:
            boot(state, vm)
    else:
        vm.update(state="stopped", zone_state="installed")
    save(state, vm)
    return vm, warnings, failure


def delete(state: State, uuid: str) -> None:
    """vmadm delete: the zone, its root dataset (recursively) and its disks."""
    vm = load(state, uuid)
    if vm is None:
        raise SimError(f"Failed to delete VM {uuid}: VM {uuid} not found")
    if vm.get("indestructible_zoneroot"):
        raise SimError(f"Failed to delete VM {uuid}: indestructible_zoneroot is set, "
                       "cannot delete")
    db = datasets.load(state)
    names = [d["zfs_filesystem"] for d in vm.get("disks", [])] + [vm["zfs_filesystem"]]
    try:
        for name in names:
            if name in db:
                datasets.destroy(state, db, name, recursive=True)
    except SimError as exc:
        datasets.save(state, db)
        raise SimError(f"Failed to delete VM {uuid}: {exc.message}") from None
    datasets.save(state, db)
    os.unlink(state.vm_path(uuid))


def start(state: State, vm: dict[str, Any]) -> bool:
    """Boot a stopped zone; False when it was already running."""
    if vm["state"] == "running":
        return False
    if vm["state"] != "stopped":
        raise SimError(f"Unable to start VM {vm['uuid']}: Cannot start vm from state "
                       f"\"{vm['state']}\", must be \"stopped\".")
    boot(state, vm)
    vm["autoboot"] = True
    vm["last_modified"] = _now()
    save(state, vm)
    return True


def stop(state: State, vm: dict[str, Any]) -> bool:
    """Halt a running zone; False when it was not running."""
    if vm["state"] != "running":
        return False
    halt(vm)
    vm["autoboot"] = False
    vm["last_modified"] = _now()
    save(state, vm)
    return True


def reboot(state: State, vm: dict[str, Any]) -> bool:
    if vm["state"] != "running":
        return False
    boot(state, vm)
    save(state, vm)
    return True


def _flat_update(vm: dict[str, Any], key: str, value: Any, warnings: list[str]) -> None:
    spec = payload.PROPS.get(key)
    if key not in UPDATABLE or spec is None or vm["brand"] not in spec[1]:
        warnings.append(f"Warning, invalid update property: [{key}] removing from payload.")
        return
    if value is None:
        vm.pop(key, None)
        return
    try:
        vm[key] = payload.coerce(key, spec[0], value)
    except (ValueError, TypeError):
        raise SimError(f"Invalid value(s) for: {key}") from None
    if key == "limit_priv" and isinstance(vm[key], list):
        vm[key] = ",".join(vm[key])


def _nic_updates(state: State, vm: dict[str, Any], body: dict[str, Any]) -> None:
    current = list(vm.get("nics", []))
    removed = body.get("remove_nics") or []
    current = [n for n in current if n["mac"] not in removed]
    for change in body.get("update_nics") or []:
        match = [n for n in current if n["mac"] == change.get("mac")]
        if not match:
            raise SimError(f"Invalid value(s) for: update_nics (no nic with mac "
                           f"{change.get('mac')})")
        match[0].update(change)
    added = body.get("add_nics") or []
    trial = {"nics": current + [dict(n) for n in added], "nic_driver": vm.get("nic_driver")}
    if added or removed or body.get("update_nics"):
        payload.nics(trial, vm["brand"], list(state.host().get("nic_tags", [])))
        vm["nics"] = trial["nics"]


def update(state: State, vm: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """vmadm update: flat properties, set_/remove_ maps, add_/update_/remove_ nics."""
    warnings: list[str] = []
    for key, value in body.items():
        if key.startswith(("set_", "remove_")) and key.partition("_")[2] in MAPS:
            target = vm.setdefault(key.partition("_")[2], {})
            if key.startswith("set_"):
                if not isinstance(value, dict):
                    raise SimError(f"Invalid value(s) for: {key}")
                target.update({k: v for k, v in value.items()})
            else:
                for item in value if isinstance(value, list) else str(value).split(","):
                    target.pop(item, None)
        elif key in ("add_nics", "update_nics", "remove_nics"):
            continue
        else:
            _flat_update(vm, key, value, warnings)
    _nic_updates(state, vm, body)
    _apply_memory_rules(vm, body)
    if "quota" in body:
        db = datasets.load(state)
        if vm["zfs_filesystem"] in db:
            db[vm["zfs_filesystem"]]["props"]["quota"] = str(int(vm["quota"]) << 30)
            datasets.save(state, db)
    vm["last_modified"] = _now()
    save(state, vm)
    return warnings


def _apply_memory_rules(vm: dict[str, Any], body: dict[str, Any]) -> None:
    if vm["brand"] not in payload.HVM and "ram" in vm:
        vm["max_physical_memory"] = vm.pop("ram")
    mpm = int(vm["max_physical_memory"])
    if vm["brand"] in payload.HVM and "ram" in body and "max_physical_memory" not in body:
        mpm = vm["max_physical_memory"] = max(mpm, int(vm["ram"]) + 256)
    if "max_locked_memory" in vm:
        vm["max_locked_memory"] = min(int(vm["max_locked_memory"]), mpm)
    if "tmpfs" in vm:
        vm["tmpfs"] = min(int(vm["tmpfs"]), mpm)
    vm["max_swap"] = max(int(vm.get("max_swap", mpm)), mpm, 256)


# -- vmadm snapshots ------------------------------------------------------------------------

def _snap_target(vm: dict[str, Any], name: str, verb: str) -> str:
    if not SNAP_NAME_RE.match(name):
        raise SimError(f"Invalid snapshot name \"{name}\": must be 1-64 characters of "
                       "[a-zA-Z0-9-_.:%]")
    if vm["brand"] == "kvm" or (vm["brand"] == "bhyve" and not vm.get("flexible_disk_size")):
        raise SimError(f"Unable to {verb} snapshot for VM {vm['uuid']}: snapshots are not "
                       f"supported for VMs of brand \"{vm['brand']}\""
                       + (" without flexible_disk_size" if vm["brand"] == "bhyve" else ""))
    return f"{vm['zfs_filesystem']}@{SNAP_PREFIX}{name}"


def create_snapshot(state: State, vm: dict[str, Any], name: str) -> None:
    snap = _snap_target(vm, name, "create")
    db = datasets.load(state)
    if snap in db:
        raise SimError(f"Unable to create snapshot for VM {vm['uuid']}: snapshot with name "
                       f"\"{name}\" already exists.")
    datasets.snapshot(state, db, snap)
    datasets.save(state, db)


def rollback_snapshot(state: State, vm: dict[str, Any], name: str) -> None:
    """Stop the zone, roll back (newer snapshots go), boot it again if it ran."""
    snap = _snap_target(vm, name, "rollback")
    db = datasets.load(state)
    if snap not in db:
        raise SimError(f"Unable to rollback snapshot for VM {vm['uuid']}: snapshot "
                       f"\"{name}\" does not exist")
    was_running = vm["state"] == "running"
    if was_running:
        halt(vm)
    datasets.rollback(state, db, snap, destroy_newer=True)
    datasets.save(state, db)
    if was_running:
        boot(state, vm)
    save(state, vm)


def delete_snapshot(state: State, vm: dict[str, Any], name: str) -> None:
    snap = _snap_target(vm, name, "delete")
    db = datasets.load(state)
    if snap not in db:
        raise SimError(f"Unable to delete snapshot for VM {vm['uuid']}: snapshot "
                       f"\"{name}\" does not exist")
    datasets.destroy(state, db, snap)
    datasets.save(state, db)
