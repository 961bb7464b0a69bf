"""Payload mapping, the state map and what the tools' failures become (no commands run)."""

from __future__ import annotations

import pytest

from drivers.smartos import spec, states
from drivers.smartos.commands import ToolFailed, Tools, fault_of, parse_list
from drivers.smartos.connection import Completed, LocalExecutor
from virt.driver.errors import FaultKind
from virt.errors import (
    InstanceExists,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    VirtError,
)
from virt.model import Flavor, ImageRef, Instance, PowerState, Vif

IMAGE = "2b3a7b5e-0b4f-5a4d-9d5e-6c0c1b6f1a11"
ZONE = {"uuid": IMAGE, "type": "zone-dataset", "requirements": {"brand": "joyent"}}
ZVOL = {"uuid": IMAGE, "type": "zvol", "image_size": 10240}
SETTINGS = spec.Settings(host="gz1", nic_tag="external", resolvers=("8.8.8.8",))


def _instance(flavor: Flavor) -> Instance:
    return Instance(uuid="6f1c2b8e-1d3a-4c5b-8e9f-0a1b2c3d4e5f", name="web1", flavor=flavor,
                    image=ImageRef(IMAGE))


def test_an_os_zone_payload():
    flavor = Flavor("m1", 2, 512, root_gb=5, ephemeral_gb=3, swap_mb=256)
    vifs = [Vif("a", "52:54:00:00:00:01"), Vif("b", "52:54:00:00:00:02")]
    body = spec.payload(_instance(flavor), ZONE, vifs, SETTINGS, power_on=False)
    assert body["brand"] == "joyent" and body["image_uuid"] == IMAGE
    assert body["uuid"] == "6f1c2b8e-1d3a-4c5b-8e9f-0a1b2c3d4e5f" and body["alias"] == "web1"
    assert body["autoboot"] is False
    assert (body["max_physical_memory"], body["max_locked_memory"], body["max_swap"]) \
        == (512, 512, 768)
    assert body["quota"] == 8 and body["cpu_cap"] == 200
    assert "ram" not in body and "vcpus" not in body and "disks" not in body
    assert body["resolvers"] == ["8.8.8.8"]
    assert body["internal_metadata"] == {spec.MARK_MANAGED: "true", spec.MARK_HOST: "gz1",
                                         spec.MARK_NAME: "web1", spec.MARK_FLAVOR: "m1"}
    assert body["nics"] == [
        {"nic_tag": "external", "mac": "52:54:00:00:00:01", "ips": ["dhcp"], "primary": True},
        {"nic_tag": "external", "mac": "52:54:00:00:00:02", "ips": ["dhcp"]},
    ]


def test_swap_has_vmadms_floor_and_no_root_disk_means_vmadms_quota():
    body = spec.payload(_instance(Flavor("tiny", 1, 64)), ZONE, [], SETTINGS)
    assert body["max_swap"] == spec.MIN_SWAP_MB and "quota" not in body


@pytest.mark.parametrize(("brand", "overhead"), [("bhyve", 1280), ("kvm", 1024)])
def test_an_hvm_payload_has_the_brands_overhead(brand, overhead):
    flavor = Flavor("h1", 4, 2048, root_gb=20, ephemeral_gb=2,
                    extra_specs={spec.BRAND_SPEC: brand})
    body = spec.payload(_instance(flavor), ZVOL, [Vif("a", "52:54:00:00:00:01")], SETTINGS)
    assert body["brand"] == brand and "image_uuid" not in body
    assert (body["ram"], body["vcpus"]) == (2048, 4)
    assert body["max_physical_memory"] == 2048 + overhead
    assert body["disks"] == [
        {"image_uuid": IMAGE, "boot": True, "model": "virtio", "image_size": 10240},
        {"size": 2048, "model": "virtio"},
    ]
    assert body["nics"][0]["model"] == "virtio"


def test_the_brand_comes_from_the_image_and_must_agree_with_the_flavor():
    assert spec.brand_for(ZVOL, Flavor("f", 1, 64)) == "bhyve"
    assert spec.brand_for({**ZVOL, "requirements": {"brand": "kvm"}}, Flavor("f", 1, 64)) == "kvm"
    with pytest.raises(InvalidRequest, match="zone-dataset image"):
        spec.brand_for(ZONE, Flavor("f", 1, 64, extra_specs={spec.BRAND_SPEC: "bhyve"}))
    with pytest.raises(InvalidRequest, match="requires 'kvm'"):
        spec.brand_for({**ZVOL, "requirements": {"brand": "kvm"}},
                       Flavor("f", 1, 64, extra_specs={spec.BRAND_SPEC: "bhyve"}))
    with pytest.raises(InvalidRequest, match="is not one of"):
        spec.brand_for(ZONE, Flavor("f", 1, 64, extra_specs={spec.BRAND_SPEC: "lx2"}))
    with pytest.raises(InvalidRequest, match="lx-dataset"):
        spec.brand_for({"uuid": IMAGE, "type": "lx-dataset"}, Flavor("f", 1, 64))


def test_refusals_before_anything_is_made():
    with pytest.raises(InvalidRequest, match="smaller than image"):
        spec.payload(_instance(Flavor("h", 1, 512, root_gb=5)), ZVOL, [], SETTINGS)
    with pytest.raises(InvalidRequest, match="nic_tag"):
        spec.nics([Vif("a", "52:54:00:00:00:01")], nic_tag="bad tag", hvm=False)
    with pytest.raises(InvalidRequest):
        spec.image_uuid(ImageRef("not-a-uuid"))
    with pytest.raises(InvalidRequest, match="disk_format"):
        spec.image_uuid(ImageRef(IMAGE, disk_format="qcow2"))


def test_only_vms_with_our_mark_for_this_host_are_ours():
    mark = {spec.MARK_MANAGED: "true", spec.MARK_HOST: "gz1"}
    assert spec.is_ours({"internal_metadata": mark}, "gz1")
    assert not spec.is_ours({"internal_metadata": mark}, "gz2")
    assert not spec.is_ours({"internal_metadata": {}}, "gz1")
    assert not spec.is_ours({}, "gz1")


@pytest.mark.parametrize(("state", "power"), [
    ("running", PowerState.RUNNING), ("stopped", PowerState.SHUTDOWN),
    ("stopping", PowerState.SHUTDOWN), ("shutting_down", PowerState.SHUTDOWN),
    ("down", PowerState.SHUTDOWN), ("provisioning", PowerState.NOSTATE),
    ("ready", PowerState.NOSTATE), ("failed", PowerState.CRASHED),
    ("receiving", PowerState.UNKNOWN), ("something-new", PowerState.UNKNOWN),
])
def test_the_state_map(state, power):
    assert states.power_state(state) is power


def test_list_rows_keep_colons_in_the_last_field():
    rows = parse_list("u1:running:web:1\nu2:stopped:\n\n", ["uuid", "state", "alias"])
    assert rows == [{"uuid": "u1", "state": "running", "alias": "web:1"},
                    {"uuid": "u2", "state": "stopped", "alias": ""}]


def _failed(code: int, err: str, argv=("/usr/sbin/vmadm", "start", "x")) -> ToolFailed:
    return ToolFailed(Completed(tuple(argv), code, b"", err.encode()))


@pytest.mark.parametrize(("code", "err", "kind"), [
    (1, "zoneadm: 6f1c: No such zone configured", FaultKind.NOT_FOUND),
    (3, 'imgadm: error (ImageNotInstalled): image "x" was not found on zpool "zones"',
     FaultKind.NOT_FOUND),
    (1, "VM with UUID 6f1c already exists", FaultKind.EXISTS),
    (1, 'Unable to start VM x: Cannot start vm from state "failed", must be "stopped".',
     FaultKind.INVALID_STATE),
    (1, "zlogin: login allowed only to running zones (x is 'installed').",
     FaultKind.INVALID_STATE),
    (1, "Invalid value(s) for: max_physical_memory", FaultKind.INVALID_REQUEST),
    (1, 'Invalid nic tag "nope"', FaultKind.INVALID_REQUEST),
    (2, "Invalid or missing UUID for start", FaultKind.INVALID_REQUEST),
    (1, "something broke", FaultKind.FAILED),
])
def test_tool_failures_are_typed(code, err, kind):
    fault = fault_of(_failed(code, err))
    assert fault is not None and fault.kind is kind and err in fault.detail


def test_translated_errors_carry_the_engines_message_and_no_secret():
    tools = Tools(LocalExecutor())
    with pytest.raises(InstanceNotFound), tools.translate("start", instance="web1 (x)"):
        raise _failed(1, "zoneadm: x: No such zone configured")
    with pytest.raises(InstanceExists), tools.translate("create", instance="web1 (x)"):
        raise _failed(1, "VM with UUID x already exists")
    with pytest.raises(InvalidState, match="Cannot start vm"), tools.translate("start"):
        raise _failed(1, 'Cannot start vm from state "failed", must be "stopped".')
    failure = ToolFailed(Completed(("/usr/sbin/zlogin", "-Q", "x", "/usr/sbin/chpasswd"), 1,
                                   b"", b"chpasswd: bad line root:hunter2-secret"),
                         secrets=["hunter2-secret"])
    with pytest.raises(VirtError) as caught, tools.translate("set the admin password"):
        raise failure
    assert "hunter2-secret" not in str(caught.value) and "***" in str(caught.value)
    assert "zlogin" in str(caught.value)
