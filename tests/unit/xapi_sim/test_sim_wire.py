"""The wire and the session rules, through the real SDK (and raw XML-RPC where the SDK hides it)."""

from __future__ import annotations

import re
import ssl
import xmlrpc.client

import pytest

from tests.unit.xapi_sim.helpers import PASSWORD, XenAPI, default_sr, failure, make_vm, vm_record
from tests.xapi_sim import XapiSimulator, make_cert

REF = re.compile(r"^OpaqueRef:[0-9a-f-]{36}$")


def raw(sim, method, *params):
    """One XML-RPC call without the SDK (no session prepended, no re-login)."""
    proxy = xmlrpc.client.ServerProxy(sim.url)
    return getattr(proxy, method)(*params)


def test_login_wrong_password_is_authentication_failed(sim):
    s = XenAPI.Session(sim.url)
    details = failure(s.login_with_password, "root", "wrong")
    assert details[0] == "SESSION_AUTHENTICATION_FAILED"
    assert "wrong" not in " ".join(details)
    assert failure(s.login_with_password, "admin", PASSWORD)[0] == "SESSION_AUTHENTICATION_FAILED"


def test_session_invalid_after_logout(sim, session):
    handle = session.handle
    assert REF.match(handle)
    assert raw(sim, "VM.get_all", handle)["Status"] == "Success"
    session.xenapi.session.logout()
    answer = raw(sim, "VM.get_all", handle)
    assert answer == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", handle]}
    assert raw(sim, "VM.get_all", "OpaqueRef:bogus")["ErrorDescription"][0] == "SESSION_INVALID"


def test_sdk_logs_in_again_on_session_invalid(sim, session):
    other = XenAPI.Session(sim.url)
    other.login_with_password("root", PASSWORD)
    # the session dies under the SDK (xapi restarted, session expired): it logs in again
    assert raw(sim, "session.logout", session.handle)["Status"] == "Success"
    old = session.handle
    assert session.xenapi.VM.get_all()
    assert session.handle != old
    other.xenapi.session.logout()


def test_refs_are_opaque_and_ints_are_strings(x):
    host = x.host.get_all()[0]
    assert REF.match(host)
    rec = x.host.get_record(host)
    assert rec["API_version_major"] == "2"
    assert isinstance(rec["metrics"], str) and REF.match(rec["metrics"])
    metrics = x.host_metrics.get_record(rec["metrics"])
    assert metrics["memory_total"].isdigit() and metrics["memory_free"].isdigit()
    dom0 = rec["control_domain"]
    vm = x.VM.get_record(dom0)
    assert vm["is_control_domain"] is True and vm["power_state"] == "Running"
    assert vm["domid"] == "0" and vm["VCPUs_max"] == "8"
    assert isinstance(vm["HVM_shadow_multiplier"], float)
    assert x.VM.get_by_uuid(vm["uuid"]) == dom0
    assert x.VM.get_uuid(dom0) == vm["uuid"]


def test_create_accepts_strings_for_ints_and_stores_strings(x):
    vm = x.VM.create(vm_record(memory_mb=128, vcpus=2))
    rec = x.VM.get_record(vm)
    assert rec["memory_static_max"] == str(128 * 1024 * 1024)
    assert rec["VCPUs_max"] == "2" and rec["domid"] == "-1"
    assert rec["power_state"] == "Halted" and rec["resident_on"] == "OpaqueRef:NULL"
    assert REF.match(rec["metrics"])
    assert x.VM.get_by_name_label("inst-1") == [vm]


def test_create_checks_the_record(x):
    rec = vm_record()
    del rec["memory_static_max"]
    assert failure(x.VM.create, rec) == ["FIELD_TYPE_ERROR", "memory_static_max"]
    assert failure(x.VM.create, vm_record(VCPUs_max="two")) == ["FIELD_TYPE_ERROR", "VCPUs_max"]
    assert failure(x.VM.create, vm_record(actions_after_crash="explode"))[0] == "FIELD_TYPE_ERROR"
    bad = vm_record(memory_dynamic_max=str(1 << 40))
    assert failure(x.VM.create, bad)[0] == "MEMORY_CONSTRAINT_VIOLATION"
    assert failure(x.VM.create, vm_record(VCPUs_at_startup="4"))[0] == "VALUE_NOT_SUPPORTED"
    # enum input is case-insensitive, output canonical (Nova sent 'User' VDI types)
    vm = x.VM.create(vm_record(actions_after_reboot="Restart"))
    assert x.VM.get_actions_after_reboot(vm) == "restart"


def test_handle_and_uuid_invalid(x):
    assert failure(x.VM.get_record, "OpaqueRef:nope") == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    assert failure(x.VDI.destroy, "OpaqueRef:nope") == ["HANDLE_INVALID", "VDI", "OpaqueRef:nope"]
    assert failure(x.VM.get_by_uuid, "no-such") == ["UUID_INVALID", "VM", "no-such"]


def test_parameter_count_and_unknown_method(x, sim, session):
    assert failure(x.VM.get_record) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "2", "1"]
    vm = x.VM.create(vm_record())
    assert failure(x.VM.start, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "4", "2"]
    # versioned messages take their older, shorter forms (VM.snapshot without ignore_vdis)
    assert REF.match(x.VM.snapshot(vm, "snap"))
    assert REF.match(x.VM.snapshot(vm, "snap2", []))
    assert failure(x.VM.frobnicate, vm) == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    # getters only: no setter for a read-only field, no Async form of a getter
    assert failure(x.VM.set_power_state, vm, "Running")[0] == "MESSAGE_METHOD_UNKNOWN"
    assert failure(x.Async.VM.get_record, vm)[0] == "MESSAGE_METHOD_UNKNOWN"


def test_maps_and_setters(x):
    vm = x.VM.create(vm_record())
    x.VM.add_to_xenstore_data(vm, "vm-data/hostname", "inst-1")
    ref_err = failure(x.VM.add_to_other_config, vm, "virtkit_uuid", "again")
    assert ref_err == ["MAP_DUPLICATE_KEY", "VM", "other_config", vm, "virtkit_uuid"]
    x.VM.remove_from_other_config(vm, "virtkit_uuid")
    assert x.VM.get_other_config(vm) == {}
    x.VM.set_name_label(vm, "renamed")
    assert x.VM.get_name_label(vm) == "renamed"
    x.VM.add_tags(vm, "virtkit")
    assert x.VM.get_tags(vm) == ["virtkit"]
    assert failure(x.VM.set_name_label, vm, 5) == ["FIELD_TYPE_ERROR", "name_label"]


def test_get_all_records_where(x):
    a, _, _ = make_vm(x, "a")
    b, _, _ = make_vm(x, "b")
    x.VM.start(a, False, False)
    ours = x.VM.get_all_records_where(
        'field "is_control_domain" = "false" and field "is_a_template" = "false"')
    assert set(ours) == {a, b}
    running = x.VM.get_all_records_where('field "power_state" = "Running"')
    assert a in running and b not in running and ours[a]["name_label"] == "a"
    either = x.VM.get_all_records_where('field "name__label" = "a" or field "name__label" = "b"')
    assert set(either) == {a, b}
    assert set(x.VM.get_all_records_where('not (field "name__label" = "a")')) >= {b}
    assert a not in x.VM.get_all_records_where('not (field "name__label" = "a")')
    assert x.VM.get_all_records_where('field "domid" <> "-1" and field "name__label" = "a"')
    assert set(x.VM.get_all_records_where("true")) == set(x.VM.get_all())
    assert x.VM.get_all_records_where("false") == {}
    net = x.network.get_all_records_where('field "name__label" = "x" or field "bridge" = "xenbr0"')
    assert len(net) == 1
    assert failure(x.VM.get_all_records_where, 'field "name__label" =')[0] == "INTERNAL_ERROR"
    assert failure(x.VM.get_all_records_where, 'field "nope" = "1"')[0] == "INTERNAL_ERROR"


def test_host_is_slave(sim):
    sim.core.api.slave_of = "10.0.0.1"
    s = XenAPI.Session(sim.url)
    assert failure(s.login_with_password, "root", PASSWORD) == ["HOST_IS_SLAVE", "10.0.0.1"]


def test_https_with_a_verified_self_signed_certificate(tmp_path):
    cert, key = make_cert(tmp_path)
    assert (tmp_path / "xapi-key.pem").stat().st_mode & 0o077 == 0
    with XapiSimulator(password=PASSWORD, tls=(cert, key)) as sim:
        assert sim.url.startswith("https://127.0.0.1:")
        unverified = XenAPI.Session(sim.url)
        with pytest.raises(ssl.SSLError):
            unverified.login_with_password("root", PASSWORD)
        ctx = ssl.create_default_context(cafile=cert)
        transport = xmlrpc.client.SafeTransport(context=ctx)
        s = XenAPI.Session(sim.url, transport=transport)
        s.login_with_password("root", PASSWORD)
        assert default_sr(s.xenapi).startswith("OpaqueRef:")
        s.xenapi.session.logout()


def test_calls_are_recorded_without_parameters(sim, x):
    x.VM.get_all()
    assert "session.login_with_password" in sim.core.api.calls
    assert sim.core.api.calls[-1] == "VM.get_all"
    assert PASSWORD not in repr(sim.core.api.calls)
