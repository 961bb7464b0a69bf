"""event.from with tokens and timeouts, Async tasks, and the injectable faults."""

from __future__ import annotations

import http.client
import threading
import time
import xmlrpc.client

import pytest

from tests.unit.xapi_sim.helpers import failure, make_vm, vm_record, wait_task


def event_from(x, classes, token, timeout):
    return getattr(x.event, "from")(classes, token, timeout)


def test_empty_token_is_a_snapshot_then_changes_only(x):
    vm, _, _ = make_vm(x)
    first = event_from(x, ["vm"], "", 0.0)
    assert {e["ref"] for e in first["events"]} >= {vm}
    assert all(e["operation"] == "add" and e["class"] == "vm" for e in first["events"])
    assert int(first["valid_ref_counts"]["vm"]) == len(x.VM.get_all())
    x.VM.start(vm, False, False)
    later = event_from(x, ["VM"], first["token"], 5.0)
    states = [e["snapshot"]["power_state"] for e in later["events"] if e["ref"] == vm]
    assert states and states[-1] == "Running"
    assert all(e["class"] == "vm" for e in later["events"])
    assert later["token"] > first["token"]


def test_timeout_returns_no_events_and_a_wait_wakes_on_change(x, sim):
    token = event_from(x, ["vm"], "", 0.0)["token"]
    t0 = time.monotonic()
    idle = event_from(x, ["vm"], token, 0.3)
    assert idle["events"] == [] and time.monotonic() - t0 >= 0.3
    vm = x.VM.create(vm_record())
    other_vm = x.VM.create(vm_record("other"))
    token = event_from(x, ["vm"], idle["token"], 0.0)["token"]
    # a change in another session wakes a waiter before its timeout
    import XenAPI

    other = XenAPI.Session(sim.url)
    other.login_with_password("root", "s3cret-pw")

    def change():
        other.xenapi.VM.set_name_label(other_vm, "not watched")
        time.sleep(0.2)
        other.xenapi.VM.set_name_label(vm, "woken")

    timer = threading.Timer(0.2, change)
    timer.start()
    t0 = time.monotonic()
    got = event_from(x, [f"vm/{vm}"], token, 10.0)
    assert 0.3 < time.monotonic() - t0 < 5
    timer.join()
    assert [(e["operation"], e["ref"]) for e in got["events"]] == [("mod", vm)]
    assert got["events"][0]["snapshot"]["name_label"] == "woken"
    other.xenapi.session.logout()


def test_destroy_is_a_del_event_and_bad_tokens(x):
    vm = x.VM.create(vm_record())
    token = event_from(x, ["vm"], "", 0.0)["token"]
    x.VM.destroy(vm)
    events = event_from(x, ["vm"], token, 1.0)["events"]
    assert ("del", vm) in [(e["operation"], e["ref"]) for e in events]
    assert failure(event_from, x, ["vm"], "garbage", 0.0) == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]
    assert failure(event_from, x, ["nosuchclass"], "", 0.0)[0] == "CLASS_NOT_FOUND"


def test_async_task_success_and_result(x):
    task = x.Async.VM.create(vm_record())
    assert task.startswith("OpaqueRef:")
    assert wait_task(x, task) == "success"
    rec = x.task.get_record(task)
    assert rec["progress"] == 1.0 and rec["error_info"] == []
    vm = xmlrpc.client.loads(f"<params><param>{rec['result']}</param></params>")[0][0]
    assert x.VM.get_name_label(vm) == "inst-1"
    assert isinstance(rec["created"], xmlrpc.client.DateTime)
    x.task.destroy(task)
    assert failure(x.task.get_record, task)[0] == "HANDLE_INVALID"


def test_async_task_failure(x):
    vm, _, _ = make_vm(x)
    task = x.Async.VM.clean_shutdown(vm)
    assert wait_task(x, task) == "failure"
    assert x.task.get_error_info(task) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert x.task.get_result(task) == ""


def test_slow_task_and_cancel(x, sim):
    vm, _, _ = make_vm(x)
    sim.core.faults.slow("VM.start", 5.0)
    task = x.Async.VM.start(vm, False, False)
    time.sleep(0.1)
    assert x.task.get_status(task) == "pending"
    assert x.VM.get_power_state(vm) == "Halted"
    x.task.cancel(task)
    assert wait_task(x, task) == "cancelled"
    assert x.VM.get_power_state(vm) == "Halted"
    sim.core.faults.slow("VM.start", 0.3)
    task = x.Async.VM.start(vm, False, False)
    assert x.task.get_status(task) == "pending"
    assert wait_task(x, task) == "success" and x.VM.get_power_state(vm) == "Running"
    assert failure(x.task.cancel, task)[0] == "OPERATION_NOT_ALLOWED"


def test_injected_failure(x, sim):
    vm, _, _ = make_vm(x)
    sim.core.faults.fail("VM.start", "SR_BACKEND_FAILURE_46", "", "The VDI is not available", "")
    assert failure(x.VM.start, vm, False, False)[0] == "SR_BACKEND_FAILURE_46"
    assert x.VM.get_power_state(vm) == "Halted"
    x.VM.start(vm, False, False)  # fired once
    sim.core.faults.fail("Async.VM.clean_shutdown", "SR_BACKEND_FAILURE_40", times=2)
    x.VM.clean_shutdown(vm)  # the sync form is not armed
    x.VM.start(vm, False, False)
    task = x.Async.VM.clean_shutdown(vm)
    assert wait_task(x, task) == "failure"
    assert x.task.get_error_info(task) == ["SR_BACKEND_FAILURE_40"]


def test_dropped_connection(x, sim):
    vm, _, _ = make_vm(x)
    # xmlrpc's transport re-sends once on a closed kept-alive connection: a single drop is
    # invisible (and the call runs on the retry); two in a row reach the caller
    sim.core.faults.drop("VM.get_power_state")
    assert x.VM.get_power_state(vm) == "Halted"
    sim.core.faults.drop("VM.start", times=2)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Halted"
    # dropped after the call ran: the effect happened, the answer was lost
    sim.core.faults.drop("VM.start", after=True)
    sim.core.faults.drop("VM.start")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"


def test_control_messages_for_an_out_of_process_simulator(x, sim):
    """simulator.* (not XAPI) arms faults and iSCSI targets over the wire."""
    vm, _, _ = make_vm(x)
    x.simulator.fail("VM.start", ["SR_BACKEND_FAILURE_46", "", "gone", ""], 1)
    assert failure(x.VM.start, vm, False, False)[0] == "SR_BACKEND_FAILURE_46"
    x.simulator.slow("Async.VM.start", 0.3, 1)
    task = x.Async.VM.start(vm, False, False)
    assert x.task.get_status(task) == "pending"
    assert wait_task(x, task) == "success"
    x.simulator.drop("VM.get_record", False, 2)
    x.simulator.clear_faults()
    assert x.VM.get_record(vm)["power_state"] == "Running"
    x.simulator.add_iscsi_target("127.0.0.1:3260", "iqn.t:1", {"0": str(1 << 30)}, "", "")
    assert ("127.0.0.1:3260", "iqn.t:1") in sim.core.storage.targets
