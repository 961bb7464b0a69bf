"""SRs, VDIs, PBDs and secrets: copy-on-write clones, space, use checks, iSCSI with CHAP secrets."""

from __future__ import annotations

import pytest

from tests.unit.xapi_sim.helpers import default_sr, failure, make_vm, new_vdi, vbd_record, vm_record

PORTAL_HOST, PORT, IQN = "127.0.0.1", "3260", "iqn.2026-01.test:vol1"


def test_vdi_clone_is_copy_on_write(x, sim):
    sr = default_sr(x)
    image = new_vdi(x, size=2 << 30, name="image")
    used = int(x.SR.get_physical_utilisation(sr))
    a, b = x.VDI.clone(image, {}), x.VDI.clone(image, {})
    assert sim.core.storage.bytes_copied == 0
    assert int(x.SR.get_physical_utilisation(sr)) == used  # nothing copied
    for clone in (a, b):
        rec = x.VDI.get_record(clone)
        assert rec["virtual_size"] == str(2 << 30) and rec["physical_utilisation"] == "0"
        assert rec["sm_config"]["vhd-parent"] == x.VDI.get_uuid(image)
        assert clone in x.SR.get_VDIs(sr)
    full = x.VDI.copy(image, sr)
    assert sim.core.storage.bytes_copied == 2 << 30
    assert int(x.SR.get_physical_utilisation(sr)) == used + (2 << 30)
    assert "vhd-parent" not in x.VDI.get_sm_config(full)


def test_sr_space_and_vdi_sizes(x):
    sr = default_sr(x)
    free = int(x.SR.get_physical_size(sr)) - int(x.SR.get_virtual_allocation(sr))
    assert failure(new_vdi, x, sr, free + 1)[0] == "SR_FULL"
    vdi = new_vdi(x, size=1 << 30)
    x.VDI.resize(vdi, str(2 << 30))
    assert x.VDI.get_virtual_size(vdi) == str(2 << 30)
    assert failure(x.VDI.resize, vdi, str(1 << 20))[0] == "VDI_TOO_SMALL"
    iso = next(iter(x.SR.get_all_records_where('field "content_type" = "iso"')))
    assert failure(new_vdi, x, iso) == ["SR_OPERATION_NOT_SUPPORTED", iso]


def test_vdi_in_use(x):
    vm, vbd, _ = make_vm(x)
    vdi = x.VBD.get_VDI(vbd)
    x.VM.start(vm, False, False)
    assert failure(x.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert failure(x.VDI.resize, vdi, str(4 << 30))[0] == "VDI_IN_USE"
    x.VDI.resize_online(vdi, str(4 << 30))
    x.VM.hard_shutdown(vm)
    x.VDI.destroy(vdi)  # its unplugged VBD goes with it
    assert failure(x.VBD.get_record, vbd)[0] == "HANDLE_INVALID"
    assert x.VM.get_VBDs(vm) == []


@pytest.fixture
def target(sim):
    return sim.core.storage.add_iscsi_target(f"{PORTAL_HOST}:{PORT}", IQN, {0: 1 << 30},
                                             chap=("user", "chap-pw-123"))


def introduce(x, sr_uuid="3cca4135-0000-5bb3-af62-275fbfe87178"):
    return x.SR.introduce(sr_uuid, "tempSR-vol1", "Disk-for:inst-1", "iscsi", "", False, {})


def test_iscsi_attach_with_a_chap_secret(x, sim, target):
    host = x.host.get_all()[0]
    secret = x.secret.create({"value": "chap-pw-123", "other_config": {}})
    sr = introduce(x)
    config = {"target": PORTAL_HOST, "port": PORT, "targetIQN": IQN, "chapuser": "user",
              "chappassword_secret": x.secret.get_uuid(secret)}
    pbd = x.PBD.create({"host": host, "SR": sr, "device_config": config, "other_config": {}})
    assert x.SR.get_VDIs(sr) == []
    x.PBD.plug(pbd)
    x.SR.scan(sr)
    (vdi,) = x.SR.get_VDIs(sr)
    assert x.VDI.get_sm_config(vdi)["LUNid"] == "0" and x.VDI.get_virtual_size(vdi) == str(1 << 30)
    x.SR.scan(sr)
    assert x.SR.get_VDIs(sr) == [vdi]  # a rescan finds the same LUN
    vm, _, _ = make_vm(x)
    x.VM.start(vm, False, False)
    vbd = x.VBD.create(vbd_record(vm, vdi, "1", bootable=False))
    x.VBD.add_to_other_config(vbd, "osvol", "True")
    x.VBD.plug(vbd)
    assert failure(x.PBD.unplug, pbd) == ["VDI_IN_USE", vdi, "unplug"]
    assert failure(x.SR.forget, sr) == ["SR_HAS_PBD", sr]
    x.VBD.unplug(vbd)
    x.VBD.destroy(vbd)
    x.PBD.unplug(pbd)
    x.SR.forget(sr)
    assert failure(x.PBD.get_record, pbd)[0] == "HANDLE_INVALID"
    assert failure(x.VDI.get_record, vdi)[0] == "HANDLE_INVALID"
    x.secret.destroy(secret)
    assert x.secret.get_all() == []


def test_iscsi_login_failures(x, target):
    host = x.host.get_all()[0]
    sr = introduce(x)
    wrong = x.secret.create({"value": "nope", "other_config": {}})
    for config, code in (
        ({"target": PORTAL_HOST, "port": PORT, "targetIQN": "iqn.other"}, "SR_BACKEND_FAILURE_141"),
        ({"target": PORTAL_HOST, "port": PORT, "targetIQN": IQN}, "SR_BACKEND_FAILURE_68"),
        ({"target": PORTAL_HOST, "port": PORT, "targetIQN": IQN, "chapuser": "user",
          "chappassword_secret": x.secret.get_uuid(wrong)}, "SR_BACKEND_FAILURE_68"),
    ):
        pbd = x.PBD.create({"host": host, "SR": sr, "device_config": config, "other_config": {}})
        details = failure(x.PBD.plug, pbd)
        assert details[0] == code
        assert "nope" not in " ".join(details)
        assert x.PBD.get_currently_attached(pbd) is False
        x.PBD.destroy(pbd)
    assert failure(x.SR.scan, sr) == ["SR_HAS_NO_PBDS", sr]


def test_sr_create_and_unknown_driver(x):
    host = x.host.get_all()[0]
    args = ({}, "0", "nfs-sr", "", "bogus", "user", False, {})
    assert failure(x.SR.create, host, *args) == ["SR_UNKNOWN_DRIVER", "bogus"]
    sr = x.SR.create(host, {}, str(10 << 30), "extra", "", "ext", "user", False, {})
    (pbd,) = x.SR.get_PBDs(sr)
    assert x.PBD.get_currently_attached(pbd) is True
    assert failure(x.SR.destroy, sr) == ["SR_HAS_PBD", sr]
    x.PBD.unplug(pbd)
    x.SR.destroy(sr)
    assert failure(x.SR.get_record, sr)[0] == "HANDLE_INVALID"


def test_vdi_introduce_legacy_form(x, target):
    sr = introduce(x)
    args = ("0bd9c54a-0000-4000-8000-000000000001", "vol", "", sr, "user", False, False, {},
            "", {}, {})
    vdi = x.VDI.introduce(*args)
    assert x.VDI.get_uuid(vdi) == args[0]
    assert failure(x.VDI.introduce, *args)[0] == "DUPLICATE_VDI"
    assert failure(x.VDI.introduce, *args[:5])[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH"


def test_unplugged_sr_disks_cannot_boot(x):
    vm = x.VM.create(vm_record())
    sr = x.SR.create(x.host.get_all()[0], {}, str(10 << 30), "extra", "", "ext", "user", False, {})
    x.VBD.create(vbd_record(vm, new_vdi(x, sr)))
    x.PBD.unplug(x.SR.get_PBDs(sr)[0])
    assert failure(x.VM.start, vm, False, False) == ["SR_HAS_NO_PBDS", sr]
