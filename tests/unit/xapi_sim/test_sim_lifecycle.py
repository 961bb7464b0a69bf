"""The power-state table of research §4.4 and what start/shutdown do to devices."""

from __future__ import annotations

import pytest

from tests.unit.xapi_sim.helpers import (
    failure,
    make_vm,
    network,
    new_vdi,
    vbd_record,
    vm_record,
)
from tests.xapi_sim import XapiSimulator

STATES = ("Halted", "Running", "Paused", "Suspended")
# op -> the states it is allowed in (xapi_vm_lifecycle.allowed_power_states)
TABLE = {
    "start": {"Halted"}, "clean_shutdown": {"Running"}, "clean_reboot": {"Running"},
    "pause": {"Running"}, "suspend": {"Running"}, "unpause": {"Paused"},
    "resume": {"Suspended"}, "hard_shutdown": {"Running", "Paused", "Suspended"},
    "hard_reboot": {"Running", "Paused"}, "destroy": {"Halted", "Suspended"},
    "clone": {"Halted"},
}
ARGS = {"start": (False, False), "resume": (False, False), "clone": ("copy",)}


@pytest.fixture
def sim():
    with XapiSimulator(password="s3cret-pw", suspend_sr=True) as server:
        yield server


def put_in(x, vm, state):
    if state == "Halted":
        return
    x.VM.start(vm, state == "Paused", False)
    if state == "Suspended":
        x.VM.suspend(vm)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("op", sorted(TABLE))
def test_power_state_table(x, op, state):
    vm, _, _ = make_vm(x)
    put_in(x, vm, state)
    call = getattr(x.VM, op)
    if state in TABLE[op]:
        call(vm, *ARGS.get(op, ()))
        return
    details = failure(call, vm, *ARGS.get(op, ()))
    expected = ",".join(s.lower() for s in sorted(TABLE[op], key=STATES.index))
    assert details[0] == "VM_BAD_POWER_STATE"
    assert details[1] == vm and details[3] == state.lower()
    assert set(details[2].split(",")) == set(expected.split(","))
    assert x.VM.get_power_state(vm) == state  # nothing changed


def test_start_plugs_devices_and_shutdown_unplugs(x):
    vm, vbd, vif = make_vm(x)
    host = x.host.get_all()[0]
    x.VM.start(vm, False, False)
    rec = x.VM.get_record(vm)
    assert rec["power_state"] == "Running" and int(rec["domid"]) >= 1
    assert rec["resident_on"] == host and vm in x.host.get_resident_VMs(host)
    assert x.VBD.get_currently_attached(vbd) is True and x.VBD.get_device(vbd) == "xvda"
    assert x.VIF.get_currently_attached(vif) is True
    metrics = x.VM_metrics.get_record(rec["metrics"])
    assert metrics["memory_actual"] == rec["memory_dynamic_max"] and metrics["VCPUs_number"] == "1"
    assert "clean_shutdown" in rec["allowed_operations"] and "start" not in rec["allowed_operations"]
    x.VM.clean_shutdown(vm)
    rec = x.VM.get_record(vm)
    assert rec["power_state"] == "Halted" and rec["domid"] == "-1"
    assert rec["resident_on"] == "OpaqueRef:NULL" and vm not in x.host.get_resident_VMs(host)
    assert x.VBD.get_currently_attached(vbd) is False and x.VBD.get_device(vbd) == ""
    assert x.VIF.get_currently_attached(vif) is False


def test_reboot_gives_a_new_domid_and_paused_start(x):
    vm, _, _ = make_vm(x)
    x.VM.start(vm, False, False)
    first = x.VM.get_domid(vm)
    x.VM.clean_reboot(vm)
    second = x.VM.get_domid(vm)
    x.VM.hard_reboot(vm)
    assert len({first, second, x.VM.get_domid(vm)}) == 3
    other, _, _ = make_vm(x, "paused")
    x.VM.start(other, True, False)
    assert x.VM.get_power_state(other) == "Paused"
    x.VM.unpause(other)
    assert x.VM.get_power_state(other) == "Running"


def test_suspend_writes_an_image_and_resume_drops_it(x):
    vm, vbd, _ = make_vm(x)
    x.VM.start(vm, False, False)
    x.VM.suspend(vm)
    rec = x.VM.get_record(vm)
    assert rec["power_state"] == "Suspended" and rec["domid"] == "-1"
    image = rec["suspend_VDI"]
    assert x.VDI.get_type(image) == "suspend"
    assert x.VDI.get_virtual_size(image) == rec["memory_static_max"]
    x.VM.resume(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    assert failure(x.VDI.get_record, image)[0] == "HANDLE_INVALID"
    assert x.VBD.get_currently_attached(vbd) is True


def test_suspend_without_a_suspend_sr():
    import XenAPI

    with XapiSimulator(password="pw") as plain:
        s = XenAPI.Session(plain.url)
        s.login_with_password("root", "pw")
        x = s.xenapi
        vm, _, _ = make_vm(x)
        x.VM.start(vm, False, False)
        assert failure(x.VM.suspend, vm) == ["VM_NO_SUSPEND_SR", vm]
        assert x.VM.get_power_state(vm) == "Running"


def test_device_plug_rules(x):
    vm, vbd, vif = make_vm(x)
    assert failure(x.VBD.plug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert failure(x.VIF.unplug, vif) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    x.VM.start(vm, False, False)
    assert failure(x.VBD.plug, vbd) == ["DEVICE_ALREADY_ATTACHED", vbd]
    data = x.VBD.create(vbd_record(vm, new_vdi(x, name="data"), "autodetect", bootable=False))
    assert x.VBD.get_userdevice(data) == "1" and x.VBD.get_currently_attached(data) is False
    x.VBD.plug(data)  # hot-plug
    assert x.VBD.get_device(data) == "xvdb"
    assert failure(x.VBD.destroy, data)[0] == "OPERATION_NOT_ALLOWED"
    x.VBD.unplug(data)
    assert failure(x.VBD.unplug, data) == ["DEVICE_ALREADY_DETACHED", data]
    x.VBD.destroy(data)
    dup = vbd_record(vm, new_vdi(x), "0")
    assert failure(x.VBD.create, dup) == ["DEVICE_ALREADY_EXISTS", "0"]
    vif2 = {"device": "0", "network": network(x), "VM": vm, "MAC": "zz", "MTU": "1500",
            "other_config": {}}
    assert failure(x.VIF.create, vif2) == ["DEVICE_ALREADY_EXISTS", "0"]
    assert failure(x.VIF.create, dict(vif2, device="1")) == ["MAC_INVALID", "zz"]


def test_a_disk_is_written_by_one_running_vm(x):
    vm, vbd, _ = make_vm(x)
    other = x.VM.create(vm_record("other"))
    x.VBD.create(vbd_record(other, x.VBD.get_VDI(vbd)))
    x.VM.start(vm, False, False)
    assert failure(x.VM.start, other, False, False)[0] == "VDI_IN_USE"
    assert x.VM.get_power_state(other) == "Halted"


def test_start_checks(x, sim):
    bare = x.VM.create(vm_record("bare", PV_bootloader=""))
    assert failure(x.VM.start, bare, False, False)[0] == "BOOTLOADER_FAILED"
    nodisk = x.VM.create(vm_record("nodisk"))
    assert failure(x.VM.start, nodisk, False, False)[0] == "BOOTLOADER_FAILED"
    huge = x.VM.create(vm_record("huge", memory_mb=64 * 1024))
    x.VBD.create(vbd_record(huge, new_vdi(x)))
    assert failure(x.VM.start, huge, False, False)[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    tpl = x.VM.create(vm_record("tpl", is_a_template=True))
    assert failure(x.VM.start, tpl, False, False) == ["VM_IS_TEMPLATE", tpl]
    blocked, _, _ = make_vm(x, "blocked", blocked_operations={"start": "rescue"})
    assert failure(x.VM.start, blocked, False, False)[0] == "OPERATION_BLOCKED"
    dom0 = x.host.get_control_domain(x.host.get_all()[0])
    assert failure(x.VM.hard_shutdown, dom0)[0] == "OPERATION_NOT_ALLOWED"
    host = x.host.get_all()[0]
    free = int(x.host.compute_free_memory(host))
    vm, _, _ = make_vm(x, "fits", memory_mb=512)
    x.VM.start_on(vm, host, False, False)
    assert int(x.host.compute_free_memory(host)) == free - 512 * 1024 * 1024
    metrics = x.host.get_metrics(host)
    assert x.host_metrics.get_memory_free(metrics) == x.host.compute_free_memory(host)


def test_destroy_removes_devices_but_not_disks(x):
    vm, vbd, vif = make_vm(x)
    vdi = x.VBD.get_VDI(vbd)
    x.VM.start(vm, False, False)
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)
    for cls, ref in (("VM", vm), ("VBD", vbd), ("VIF", vif)):
        assert failure(getattr(x, cls).get_record, ref)[0] == "HANDLE_INVALID"
    assert x.VDI.get_VBDs(vdi) == []


def test_clone_copies_the_vm_with_cow_disks_and_snapshot(x, sim):
    vm, vbd, vif = make_vm(x)
    x.VM.add_to_xenstore_data(vm, "vm-data/hostname", "inst-1")
    copied_before = sim.core.storage.bytes_copied
    clone = x.VM.clone(vm, "clone")
    rec = x.VM.get_record(clone)
    assert rec["name_label"] == "clone" and rec["power_state"] == "Halted"
    assert rec["xenstore_data"] == {"vm-data/hostname": "inst-1"}
    (cvbd,) = rec["VBDs"]
    cvdi = x.VBD.get_VDI(cvbd)
    assert cvdi != x.VBD.get_VDI(vbd)
    assert x.VDI.get_sm_config(cvdi)["vhd-parent"] == x.VDI.get_uuid(x.VBD.get_VDI(vbd))
    assert sim.core.storage.bytes_copied == copied_before  # copy-on-write
    assert len(rec["VIFs"]) == 1 and x.VIF.get_network(rec["VIFs"][0]) == x.VIF.get_network(vif)
    x.VM.start(vm, False, False)
    snap = x.VM.snapshot(vm, "snap")
    srec = x.VM.get_record(snap)
    assert srec["is_a_snapshot"] and srec["is_a_template"] and srec["snapshot_of"] == vm
    assert snap in x.VM.get_snapshots(vm)
    svdi = x.VBD.get_VDI(srec["VBDs"][0])
    assert x.VDI.get_is_a_snapshot(svdi) and x.VDI.get_snapshot_of(svdi) == x.VBD.get_VDI(vbd)
    assert failure(x.VM.start, snap, False, False) == ["VM_IS_TEMPLATE", snap]
    # a snapshot turned into a VM: clone of the template, then start
    again = x.VM.clone(snap, "from-snap")
    x.VM.set_is_a_template(again, False)
    x.VM.start(again, False, False)
    assert x.VM.get_power_state(again) == "Running"
    copy = x.VM.copy(clone, "full", x.VDI.get_SR(cvdi))
    assert sim.core.storage.bytes_copied > copied_before
    assert x.VM.get_power_state(copy) == "Halted"


def test_memory_dynamic_range(x):
    vm, _, _ = make_vm(x, memory_mb=256)
    x.VM.set_memory_dynamic_range(vm, str(128 * 1024 * 1024), str(256 * 1024 * 1024))
    assert x.VM.get_memory_dynamic_min(vm) == str(128 * 1024 * 1024)
    bad = failure(x.VM.set_memory_dynamic_range, vm, "1", str(1 << 40))
    assert bad[0] == "MEMORY_CONSTRAINT_VIOLATION"
