"""drivers/libvirt/xen.py without a Xen: PV NICs on dom0's bridge, the save of a booting guest."""

from __future__ import annotations

import libvirt
import pytest

from drivers.libvirt import xen, xml
from virt.errors import UnsupportedOperation
from virt.model import ImageRef


def _domain(*ifaces: xml.Interface) -> xml.Domain:
    return xml.Domain(name="g", uuid="00000000-0000-0000-0000-000000000001", memory_kib=131072,
                      vcpus=1, os=xml.Os(kernel="/k", initrd="/r"),
                      disks=[xml.Disk(target_dev="vda", source_path="/d", driver_type="qcow2")],
                      interfaces=list(ifaces))


IMAGE = ImageRef(ref="/d", kernel="/k", ramdisk="/r")


def test_a_usermode_nic_joins_the_xen_bridge_and_the_root_disk_is_xvda() -> None:
    pv = xen.pv_domain(_domain(xml.Interface(mac="52:54:00:00:00:01")), IMAGE, bridge="xenbr0")
    assert [(i.type, i.source, i.model) for i in pv.interfaces] == [("bridge", "xenbr0", None)]
    assert [d.target_dev for d in pv.disks] == [xen.ROOT_DEV]


def test_a_named_bridge_is_kept() -> None:
    nic = xml.Interface(mac="52:54:00:00:00:02", type="bridge", source="br-ext")
    pv = xen.pv_domain(_domain(nic), IMAGE, bridge="xenbr0")
    assert [(i.type, i.source) for i in pv.interfaces] == [("bridge", "br-ext")]


def test_no_xen_bridge_refuses_a_usermode_nic() -> None:
    with pytest.raises(UnsupportedOperation, match="xen_bridge"):
        xen.pv_domain(_domain(xml.Interface(mac="52:54:00:00:00:03")), IMAGE, bridge="")


class _Booting:
    """A domain whose first `fails` saves fail as libxl's do before the guest's kernel is up."""

    def __init__(self, fails: int, message: str = "internal error: Failed to save domain '4' "
                 "with libxenlight") -> None:
        self.fails, self.message, self.saves, self.removed = fails, message, 0, 0
        self.image = False

    def managedSave(self, _flags: int) -> None:
        self.saves += 1
        if self.saves <= self.fails:
            self.image = True  # what libvirt may leave behind
            exc = libvirt.libvirtError(self.message)
            exc.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, self.message, 0, "", "", "", 0, 0)
            raise exc

    def hasManagedSaveImage(self, _flags: int) -> bool:
        return self.image

    def managedSaveRemove(self, _flags: int) -> None:
        self.image, self.removed = False, self.removed + 1

    def isActive(self) -> int:
        return 1


def test_the_save_of_a_booting_pv_guest_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xen, "SAVE_RETRY", 0.0)
    dom = _Booting(fails=2)
    xen.managed_save(dom, xen.DOMAIN_TYPE)  # type: ignore[arg-type]
    assert (dom.saves, dom.removed, dom.image) == (3, 2, False)


def test_a_save_that_never_succeeds_fails_with_no_image_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xen, "SAVE_RETRY", 0.0)
    dom = _Booting(fails=10**6)
    with pytest.raises(libvirt.libvirtError, match="Failed to save"):
        xen.managed_save(dom, xen.DOMAIN_TYPE, wait=0.05)  # type: ignore[arg-type]
    assert dom.image is False


@pytest.mark.parametrize(("domain_type", "message"), [
    ("kvm", "internal error: Failed to save domain 'x' with libxenlight"),
    ("xen", "operation failed: no space left"),
])
def test_other_save_failures_are_not_retried(domain_type: str, message: str) -> None:
    dom = _Booting(fails=1, message=message)
    with pytest.raises(libvirt.libvirtError):
        xen.managed_save(dom, domain_type)  # type: ignore[arg-type]
    assert dom.saves == 1
