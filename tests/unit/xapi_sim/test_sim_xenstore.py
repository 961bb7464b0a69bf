"""The dom0 xenstore plugin and the domains' trees, on the test xenstore server's real wire."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from guest_agent.wire import XenstoreClient, XenstoreError
from tests.unit.xapi_sim.helpers import PASSWORD, XenAPI, failure, make_vm
from tests.xapi_sim import XapiSimulator
from tests.xenstore.server import XenstoreServer


@pytest.fixture
def xs():
    server = XenstoreServer().start()
    yield server
    server.stop()


@pytest.fixture
def sim(xs):
    with XapiSimulator(password=PASSWORD, xenstore=xs.path) as server:
        yield server


def plugin(x, fn, **args):
    host = x.host.get_all()[0]
    return x.host.call_plugin(host, "xenstore.py", fn, {k: str(v) for k, v in args.items()})


def test_start_writes_the_domain_tree_and_shutdown_removes_it(x, xs):
    vm, _, _ = make_vm(x)
    x.VM.add_to_xenstore_data(vm, "vm-data/hostname", "inst-1")
    x.VM.add_to_xenstore_data(vm, "vm-data/networking/0200deadbeef", json.dumps({"mac": "x"}))
    x.VM.start(vm, False, False)
    domid = int(x.VM.get_domid(vm))
    with XenstoreClient(xs.path) as dom0:
        base = f"/local/domain/{domid}"
        assert dom0.read_text(f"{base}/name") == "inst-1"
        assert dom0.read_text(f"{base}/vm-data/hostname") == "inst-1"
        assert dom0.get_perms(f"{base}/data") == [f"n{domid}"]
    with XenstoreClient(xs.domain_socket(domid)) as guest:  # the guest reads its own tree
        assert guest.read_text("vm-data/hostname") == "inst-1"
        guest.write("data/guest/probe", "hello")
    with XenstoreClient(xs.domain_socket(domid + 50)) as stranger:  # another domU may not
        with pytest.raises(XenstoreError) as denied:
            stranger.read_text(f"/local/domain/{domid}/vm-data/hostname")
        assert denied.value.name == "EACCES"
    x.VM.clean_shutdown(vm)
    with XenstoreClient(xs.path) as dom0:
        assert not dom0.exists(f"/local/domain/{domid}")


def test_plugin_read_write_ls_rm(x):
    vm, _, _ = make_vm(x)
    x.VM.start(vm, False, False)
    domid = x.VM.get_domid(vm)
    assert plugin(x, "write_record", dom_id=domid, path="vm-data/networking/aa", value="{}") == "{}"
    assert plugin(x, "read_record", dom_id=domid, path="vm-data/networking/aa") == "{}"
    assert plugin(x, "read", dom_id=domid, path="vm-data/none", ignore_missing_path="True") == "None"
    details = failure(plugin, x, "read", dom_id=domid, path="vm-data/none")
    assert details[0] == "XENAPI_PLUGIN_EXCEPTION" and details[1] == "read"
    tree = json.loads(plugin(x, "ls", dom_id=domid, path="vm-data"))
    assert tree["networking"] == {"aa": "{}"}
    plugin(x, "rm", dom_id=domid, path="vm-data/networking")
    assert "networking" not in json.loads(plugin(x, "list_records", dom_id=domid, path="vm-data"))
    assert failure(plugin, x, "read", dom_id=domid, path="../../0/x")[0] == "XENAPI_PLUGIN_EXCEPTION"
    x.VM.hard_shutdown(vm)
    gone = failure(plugin, x, "read", dom_id=domid, path="name")
    assert gone[0] == "XENAPI_PLUGIN_EXCEPTION" and "no longer present" in gone[3]
    host = x.host.get_all()[0]
    assert failure(x.host.call_plugin, host, "glance", "download_vhd", {}) == [
        "XENAPI_MISSING_PLUGIN", "glance"]


def test_an_agent_exchange_through_the_plugin(x, xs):
    """dom0 writes data/host/<id>; a guest on its own xenbus answers at data/guest/<id>."""
    vm, _, _ = make_vm(x)
    x.VM.start(vm, False, False)
    domid = int(x.VM.get_domid(vm))
    request_id = str(uuid.uuid4())
    guest = XenstoreClient(xs.domain_socket(domid))

    guest.mkdir("data/host")  # what a guest agent does at start

    def answer():
        events = guest.subscribe("agent")
        guest.watch("data/host", "agent")
        while True:
            events.get(timeout=10)
            for rid in guest.directory("data/host"):
                body = json.loads(guest.read_text(f"data/host/{rid}") or "{}")
                guest.rm(f"data/host/{rid}")
                reply = {"returncode": "0", "message": body.get("name", "")}
                guest.write(f"data/guest/{rid}", json.dumps(reply))
                return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    plugin(x, "write", dom_id=domid, path=f"data/host/{request_id}",
           value=json.dumps({"name": "version", "value": "agent"}))
    reply = plugin(x, "watch", dom_id=domid, path=f"data/guest/{request_id}", timeout=10)
    assert json.loads(reply) == {"returncode": "0", "message": "version"}
    thread.join(5)
    guest.close()
    timeout = failure(plugin, x, "wait_record", dom_id=domid, path="data/guest/never", timeout=0.2)
    assert timeout[0] == "XENAPI_PLUGIN_EXCEPTION" and timeout[3].startswith("TIMEOUT")


def test_no_xenstore_configured():
    with XapiSimulator(password=PASSWORD) as plain:
        s = XenAPI.Session(plain.url)
        s.login_with_password("root", PASSWORD)
        host = s.xenapi.host.get_all()[0]
        details = failure(s.xenapi.host.call_plugin, host, "xenstore", "read",
                          {"dom_id": "1", "path": "name"})
        assert details[0] == "XENAPI_PLUGIN_EXCEPTION"
