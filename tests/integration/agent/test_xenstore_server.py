"""The test xenstore speaks the real wire protocol: proven with the real xenstore-utils."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from guest_agent.wire import XenstoreError
from tests.testbed import require
from tests.xenstore import TEST_DOMID as DOMID

BASE = f"/local/domain/{DOMID}"
TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-rm")


def _tool(xenstore, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XENSTORED_PATH=xenstore.path)
    return subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=20, check=False
    )


@pytest.fixture
def tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    require(not missing, f"xenstore-utils ({', '.join(missing)})")


def test_real_tools_round_trip(xenstore, dom0, tools):
    assert (
        _tool(
            xenstore, "xenstore-write", f"{BASE}/vm-data/hostname", "web-1", "/tool/a/b", "x y"
        ).returncode
        == 0
    )
    assert dom0.read(f"{BASE}/vm-data/hostname") == b"web-1"
    read = _tool(xenstore, "xenstore-read", f"{BASE}/vm-data/hostname", "/tool/a/b")
    assert (read.returncode, read.stdout) == (0, "web-1\nx y\n")
    dom0.write("/tool/a/c", "written by our client")
    listing = _tool(xenstore, "xenstore-ls", "/tool")
    assert listing.returncode == 0
    assert listing.stdout.splitlines() == ['a = ""', ' b = "x y"', ' c = "written by our client"']
    perms = _tool(xenstore, "xenstore-ls", "-p", BASE)
    assert 'data = ""' in perms.stdout and "(n7)" in perms.stdout
    assert _tool(xenstore, "xenstore-rm", "/tool/a/b").returncode == 0
    assert not dom0.exists("/tool/a/b")
    missing = _tool(xenstore, "xenstore-read", "/tool/a/b")
    assert missing.returncode != 0 and "couldn't read path" in missing.stderr


def test_errors_travel_as_errno_names(dom0, domu):
    with pytest.raises(XenstoreError) as err:
        dom0.read("/no/such/node")
    assert err.value.name == "ENOENT"
    with pytest.raises(XenstoreError) as err:
        dom0.write("/bad//path", "x")
    assert err.value.name == "EINVAL"
    dom0.rm("/tool/never-there")  # rm of a missing child of an existing parent is fine


def test_permissions_per_domain(xenstore, dom0, domu):
    dom0.write(f"{BASE}/vm-data/networking/aa", "{}")
    # The guest reads its vm-data but cannot write it; it owns data/.
    assert domu.read("vm-data/networking/aa") == b"{}"
    with pytest.raises(XenstoreError) as err:
        domu.write("vm-data/hostname", "evil")
    assert err.value.name == "EACCES"
    domu.write("data/guest/x", "reply")
    assert dom0.get_perms(f"{BASE}/data/guest/x")[0] == "n7"
    # Another domain sees nothing of domain 7.
    xenstore.introduce_domain(8)
    from guest_agent.wire import XenstoreClient

    with XenstoreClient(xenstore.domain_socket(8), timeout=5) as other:
        with pytest.raises(XenstoreError) as err:
            other.read(f"{BASE}/data/guest/x")
        assert err.value.name == "EACCES"
    # dom0 grants read; the owner may change permissions, others may not.
    with pytest.raises(XenstoreError):
        domu.set_perms("vm-data", ["b7"])
    domu.set_perms("data/guest/x", ["n7", "r0"])
    assert domu.get_perms("data/guest/x") == ["n7", "r0"]
    # The per-value quota for guests.
    with pytest.raises(XenstoreError) as err:
        domu.write("data/big", "x" * 2049)
    assert err.value.name == "ENOSPC"


def test_watches_fire_on_subtree_changes_and_removal(dom0, domu):
    domu.watch("data/host", "tok")
    assert domu.wait_event(2).path == "data/host"  # fires once on registration
    dom0.write(f"{BASE}/data/host/r1", "req")
    event = domu.wait_event(2)
    assert (event.path, event.token) == ("data/host/r1", "tok")
    dom0.watch(f"{BASE}/data/host/r1", "gone")
    assert dom0.wait_event(2).token == "gone"
    dom0.rm(f"{BASE}/data/host")  # removing an ancestor fires the watch below it
    paths = {dom0.wait_event(2).path}
    assert f"{BASE}/data/host" in paths
    dom0.unwatch(f"{BASE}/data/host/r1", "gone")
    dom0.write("/tool/unrelated", "x")
    assert dom0.wait_event(0.2) is None


def test_transactions_conflict_with_eagain(dom0, domu):
    dom0.write("/tool/counter", "1")
    tx = dom0.transaction_start()
    assert dom0.read("/tool/counter", tx=tx) == b"1"
    dom0.write("/tool/counter", "2", tx=tx)
    assert dom0.read("/tool/counter") == b"1"  # isolated until commit
    dom0.transaction_end(tx)
    assert dom0.read("/tool/counter") == b"2"

    tx = dom0.transaction_start()
    dom0.read("/tool/counter", tx=tx)
    dom0.write("/tool/counter", "from-tx", tx=tx)
    dom0.write("/tool/counter", "concurrent")
    with pytest.raises(XenstoreError) as err:
        dom0.transaction_end(tx)
    assert err.value.name == "EAGAIN"
    assert dom0.read("/tool/counter") == b"concurrent"

    tx = dom0.transaction_start()
    dom0.write("/tool/aborted", "x", tx=tx)
    dom0.transaction_end(tx, commit=False)
    assert not dom0.exists("/tool/aborted")


def test_release_domain_removes_tree(xenstore, dom0):
    assert dom0.exists(f"{BASE}/name")
    xenstore.release_domain(DOMID)
    assert not dom0.exists(f"{BASE}/name")
    assert dom0.get_domain_path(DOMID) == BASE
