"""vmadm list / lookup / get / update / snapshots of the simulator (research/smartos.md §3, §7)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def three(zone_sim):
    """Three zones: (uuid, alias, memory) sorted by memory."""
    made = [(zone_sim.create(alias=a, max_physical_memory=m), a, m)
            for a, m in (("web", 512), ("db", 1024), ("cache", 256))]
    return zone_sim, sorted(made, key=lambda t: t[2])


def test_list_default_columns_widths_and_sort(three):
    sim, made = three
    lines = sim.ok("vmadm", "list").stdout.splitlines()
    assert lines[0] == ("UUID" + " " * 32 + "  TYPE  RAM      STATE             ALIAS")
    for line, (uuid, alias, mem) in zip(lines[1:], made, strict=True):
        assert line == f"{uuid}  OS    {str(mem).ljust(7)}  {'running'.ljust(16)}  {alias}"


def test_list_parsable_no_header_and_colons(three):
    sim, made = three
    out = sim.ok("vmadm", "list", "-p", "-o", "uuid,state,ram").stdout
    assert out == "".join(f"{u}:running:{m}\n" for u, _a, m in made)


def test_list_H_drops_the_header_and_missing_values_print_dash(three):
    sim, made = three
    out = sim.ok("vmadm", "list", "-H", "-o", "uuid,cpu_cap").stdout.splitlines()
    assert out == [f"{u}  -" for u, _a, _m in made]
    parsable = sim.ok("vmadm", "list", "-pH", "-o", "alias,cpu_cap").stdout.splitlines()
    assert parsable[0] == f"{made[0][1]}:"


def test_list_sort_descending_and_by_alias(three):
    sim, made = three
    out = sim.ok("vmadm", "list", "-p", "-o", "alias", "-s", "-ram").stdout.split()
    assert out == [a for _u, a, _m in reversed(made)]
    out = sim.ok("vmadm", "list", "-p", "-o", "alias", "-s", "alias").stdout.split()
    assert out == sorted(a for _u, a, _m in made)


def test_list_filters_equality_regex_and_nested(three):
    sim, made = three
    uuid = made[1][0]
    sim.ok("vmadm", "update", uuid, "alias=web2")
    assert sim.ok("vmadm", "list", "-pH", "-o", "uuid", "alias=web2").stdout.split() == [uuid]
    got = sim.ok("vmadm", "list", "-pH", "-o", "alias", "-s", "alias", "alias=~^(db|ca)")
    assert got.stdout.split() == ["cache", "db"]
    assert sim.ok("vmadm", "list", "-p", "-o", "uuid", "ram=1024", "state=running").stdout \
        .split() == [next(u for u, _a, m in made if m == 1024)]
    sim.ok("vmadm", "update", uuid, stdin=json.dumps({"set_tags": {"role": "x"}}))
    assert sim.ok("vmadm", "list", "-pH", "-o", "uuid,tags.role", "tags.role=x").stdout \
        == f"{uuid}:x\n"


@pytest.mark.parametrize("args, message", [
    (["nosuchkey=1"], 'Invalid filter key: "nosuchkey"'),
    (["-o", "uuid,bogus"], 'Invalid order key: "bogus"'),
    (["-s", "bogus"], "invalid sort field: bogus"),
])
def test_list_bad_keys(zone_sim, args, message):
    proc = zone_sim.run("vmadm", "list", *args)
    assert (proc.returncode, proc.stderr.strip()) == (1, message)


def test_list_hvm_type_and_ram(sim):
    sim.ok("vmadm", "create", stdin=json.dumps({"brand": "kvm", "ram": 512}))
    sim.ok("vmadm", "create", stdin=json.dumps({"brand": "bhyve", "ram": 256}))
    rows = sim.ok("vmadm", "list", "-p", "-o", "type,ram,max_physical_memory").stdout.split()
    assert rows == ["BHYV:256:1536", "KVM:512:1536"]


def test_lookup_plain_json_and_unique(three):
    sim, made = three
    assert sorted(sim.ok("vmadm", "lookup").stdout.split()) == sorted(u for u, _a, _m in made)
    objs = json.loads(sim.ok("vmadm", "lookup", "-j", "alias=db").stdout)
    assert [o["uuid"] for o in objs] == [u for u, a, _m in made if a == "db"]
    assert objs[0]["brand"] == "joyent" and "type" not in objs[0]
    only = json.loads(sim.ok("vmadm", "lookup", "-j", "-o", "uuid,state", "alias=db").stdout)
    assert only == [{"uuid": objs[0]["uuid"], "state": "running"}]
    assert sim.ok("vmadm", "lookup", "-1", "alias=db").stdout.strip() == objs[0]["uuid"]
    proc = sim.run("vmadm", "lookup", "-1", "state=running")
    assert (proc.returncode, proc.stderr.strip()) == \
        (1, "Requested unique lookup but found 3 results.")
    proc = sim.run("vmadm", "lookup", "-o", "uuid")
    assert (proc.returncode, proc.stderr.strip()) == (1, "Cannot specify -o without -j")


def test_get_is_two_space_json(zone_sim):
    uuid = zone_sim.create()
    out = zone_sim.ok("vmadm", "get", uuid).stdout
    assert out.startswith('{\n  "alias": "vm",\n')
    assert out == json.dumps(json.loads(out), indent=2) + "\n"


# -- update ----------------------------------------------------------------------------------

def test_update_flat_values_are_coerced(zone_sim):
    uuid = zone_sim.create()
    proc = zone_sim.ok("vmadm", "update", uuid, "quota=40", "cpu_cap=200", "alias=renamed")
    assert proc.stderr.strip() == f"Successfully updated VM {uuid}"
    vm = zone_sim.get(uuid)
    assert (vm["quota"], vm["cpu_cap"], vm["alias"]) == (40, 200, "renamed")
    assert zone_sim.zfs_db()[f"zones/{uuid}"]["props"]["quota"] == str(40 << 30)
    proc = zone_sim.run("vmadm", "update", uuid, "quota=much")
    assert (proc.returncode, proc.stderr.strip()) == (1, "Invalid value(s) for: quota")


def test_update_maps_set_and_remove(zone_sim):
    uuid = zone_sim.create(internal_metadata={"virtkit:managed": "true", "old": "1"})
    zone_sim.ok("vmadm", "update", uuid, stdin=json.dumps({
        "set_internal_metadata": {"root_pw": "x", "virtkit:host": "h1"},
        "remove_internal_metadata": ["old"],
        "set_customer_metadata": {"user-script": "true"}, "set_tags": {"a": "b"}}))
    vm = zone_sim.get(uuid)
    assert vm["internal_metadata"] == {"virtkit:managed": "true", "root_pw": "x",
                                       "virtkit:host": "h1"}
    assert vm["customer_metadata"] == {"user-script": "true"} and vm["tags"] == {"a": "b"}
    zone_sim.ok("vmadm", "update", uuid, stdin=json.dumps({"remove_tags": ["a"]}))
    assert zone_sim.get(uuid)["tags"] == {}


def test_update_memory_rules_and_create_only_props(zone_sim):
    uuid = zone_sim.create(max_physical_memory=512)
    proc = zone_sim.ok("vmadm", "update", uuid, stdin=json.dumps(
        {"max_physical_memory": 1024, "brand": "kvm"}))
    assert "Warning, invalid update property: [brand]" in proc.stderr
    vm = zone_sim.get(uuid)
    assert vm["max_physical_memory"] == 1024 and vm["max_swap"] == 1024
    assert vm["brand"] == "joyent"


def test_update_nics(zone_sim):
    uuid = zone_sim.create(nics=[{"nic_tag": "admin", "ips": ["10.1.0.2/24"]}])
    mac = zone_sim.get(uuid)["nics"][0]["mac"]
    zone_sim.ok("vmadm", "update", uuid, stdin=json.dumps(
        {"add_nics": [{"nic_tag": "external", "ips": ["dhcp"]}]}))
    nics = zone_sim.get(uuid)["nics"]
    assert [n["nic_tag"] for n in nics] == ["admin", "external"]
    zone_sim.ok("vmadm", "update", uuid, stdin=json.dumps({"remove_nics": [mac]}))
    assert [n["nic_tag"] for n in zone_sim.get(uuid)["nics"]] == ["external"]


def test_update_unknown_vm(zone_sim):
    proc = zone_sim.run("vmadm", "update", "3f0b3a0e-1111-4222-8333-444455556666", "alias=x")
    assert proc.returncode == 1 and "No such zone configured" in proc.stderr


# -- vmadm snapshots -------------------------------------------------------------------------

def test_snapshots_are_vmsnap_datasets_listed_newest_first(zone_sim):
    uuid = zone_sim.create()
    assert zone_sim.ok("vmadm", "create-snapshot", uuid, "one").stderr.strip() == \
        f"Created snapshot one for VM {uuid}"
    zone_sim.ok("vmadm", "create-snapshot", uuid, "two")
    db = zone_sim.zfs_db()
    assert f"zones/{uuid}@vmsnap-one" in db and f"zones/{uuid}@vmsnap-two" in db
    snaps = zone_sim.get(uuid)["snapshots"]
    assert [s["name"] for s in snaps] == ["two", "one"]
    assert snaps[0]["created_at"].endswith("Z") and isinstance(snaps[0]["size"], float | int)
    proc = zone_sim.run("vmadm", "create-snapshot", uuid, "one")
    assert proc.returncode == 1 and "already exists" in proc.stderr
    proc = zone_sim.run("vmadm", "create-snapshot", uuid, "bad/name")
    assert proc.returncode == 1 and "Invalid snapshot name" in proc.stderr


def test_rollback_restores_files_and_drops_newer_snapshots(zone_sim):
    uuid = zone_sim.create()
    zone_sim.ok("zlogin", uuid, "/usr/bin/tee", "/root/f", stdin="before")
    zone_sim.ok("vmadm", "create-snapshot", uuid, "s1")
    zone_sim.ok("zlogin", uuid, "/usr/bin/tee", "/root/f", stdin="after")
    zone_sim.ok("vmadm", "create-snapshot", uuid, "s2")
    zoneid = zone_sim.get(uuid)["zoneid"]
    proc = zone_sim.ok("vmadm", "rollback-snapshot", uuid, "s1")
    assert proc.stderr.strip() == f"Rolled back snapshot s1 for VM {uuid}"
    assert zone_sim.ok("zlogin", uuid, "/usr/bin/cat", "/root/f").stdout == "before"
    vm = zone_sim.get(uuid)
    assert [s["name"] for s in vm["snapshots"]] == ["s1"]
    assert vm["state"] == "running" and vm["zoneid"] != zoneid
    assert zone_sim.ok("vmadm", "delete-snapshot", uuid, "s1").stderr.strip() == \
        f"Deleted snapshot s1 for VM {uuid}"
    assert zone_sim.get(uuid)["snapshots"] == []
    proc = zone_sim.run("vmadm", "delete-snapshot", uuid, "s1")
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_kvm_snapshots_are_refused(sim):
    uuid = sim.ok("vmadm", "create", stdin=json.dumps({"brand": "kvm"})).stderr.split()[-1]
    proc = sim.run("vmadm", "create-snapshot", uuid, "s")
    assert proc.returncode == 1 and 'not supported for VMs of brand "kvm"' in proc.stderr
