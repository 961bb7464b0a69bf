"""Domain XML builders: round trip, escaping of hostile strings, libvirt schema validation."""

from __future__ import annotations

import itertools

import pytest

from drivers.libvirt import design, xml
from drivers.libvirt.images import InstanceDisks
from tests.libvirt_helpers import validate_domain_xml
from virt.errors import InvalidRequest
from virt.model import Flavor, ImageRef, Instance, Vif

UUID = "0b6c0b0e-5f9f-4a55-9b0c-3f1e6a4c2a11"
HOSTILE = "</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices>&amp;\"'"


def _iscsi_disk(dev: str, chap: bool) -> xml.Disk:
    disk = xml.Disk(target_dev=dev, source_type="network", protocol="iscsi",
                    source_name="iqn.2024-01.org.example:vol/1", hosts=[("127.0.0.1", 3260)],
                    driver_type="raw", cache="none", serial="vol-1",
                    initiator="iqn.2024-01.org.virtkit:host-1")
    if chap:
        disk.auth_username = "user"
        disk.secret_type = "iscsi"
        disk.secret_usage = f"virtkit-{UUID}-{dev}"
    return disk


def _domain(flavor: Flavor, *, kernel: bool, volumes: int, chap: bool, nics: list[Vif],
            virt_type: str = "qemu", metadata: dict[str, str] | None = None) -> xml.Domain:
    instance = Instance(uuid=UUID, name="vm-1", flavor=flavor, image=ImageRef("/img/base.qcow2"),
                        metadata=metadata or {})
    disks = InstanceDisks(
        directory="/var/lib/virtkit/instances/x", root="/var/lib/virtkit/instances/x/disk",
        ephemeral="/x/disk.eph0" if flavor.ephemeral_gb else None,
        swap="/x/disk.swap" if flavor.swap_mb else None,
        kernel="/x/kernel" if kernel else None, ramdisk="/x/ramdisk" if kernel else None)
    vols = [_iscsi_disk(f"vd{c}", chap) for c in "bcdefg"[:volumes]]
    return design.domain_for(instance=instance, virt_type=virt_type, disks=disks,
                             volume_disks=vols, vifs=nics, cache_mode="none")


NICS = [
    [],
    [Vif(id="a", address="52:54:00:00:00:01")],
    [Vif(id="b", address="52:54:00:00:00:02", bridge="br0"),
     Vif(id="c", address="52:54:00:00:00:03", network="default", model="e1000")],
]
FLAVORS = [Flavor("tiny", 1, 64), Flavor("big", 4, 8192, 20, 10, 512)]


@pytest.mark.parametrize(
    ("flavor", "kernel", "volumes", "chap", "nics"),
    [(f, k, v, c, n) for f, k, (v, c), n in itertools.product(
        FLAVORS, [False, True], [(0, False), (1, True), (2, False)], NICS)],
)
def test_every_combination_validates_against_libvirt_schema(tmp_path, flavor, kernel, volumes,
                                                             chap, nics):
    domain = _domain(flavor, kernel=kernel, volumes=volumes, chap=chap, nics=nics)
    validate_domain_xml(tmp_path, domain.to_xml())


@pytest.mark.parametrize("virt_type", ["kvm", "test"])
def test_other_domain_typesvalidate_domain_xml(tmp_path, virt_type):
    validate_domain_xml(tmp_path, _domain(FLAVORS[1], kernel=True, volumes=1, chap=True, nics=NICS[2],
                                virt_type=virt_type).to_xml())


def test_round_trip_keeps_every_field():
    domain = _domain(FLAVORS[1], kernel=True, volumes=2, chap=True, nics=NICS[2],
                     metadata={"role": "db"})
    again = xml.Domain.from_xml(domain.to_xml())
    assert again == domain
    assert again.disks[-1].secret_usage == f"virtkit-{UUID}-vdc"
    assert again.disks[-1].initiator == "iqn.2024-01.org.virtkit:host-1"
    assert [d.target_dev for d in again.disks] == ["vda", "vdd", "vde", "vdb", "vdc"]


def test_iscsi_source_names_its_initiator():
    source = _iscsi_disk("vdb", chap=True).to_element().find("source")
    assert source.find("initiator/iqn").get("name") == "iqn.2024-01.org.virtkit:host-1"
    assert xml.Disk.from_element(_iscsi_disk("vdb", chap=False).to_element()).initiator == \
        "iqn.2024-01.org.virtkit:host-1"


def test_hostile_strings_are_data_not_markup(tmp_path):
    flavor = Flavor(HOSTILE, 1, 64)
    domain = _domain(flavor, kernel=False, volumes=0, chap=False, nics=[],
                     metadata={HOSTILE: HOSTILE, "k": "]]><evil/>"})
    domain.metadata.image = HOSTILE  # type: ignore[union-attr]
    text = domain.to_xml()
    root = xml.parse(text)
    assert len(root.findall("devices/disk")) == 1  # nothing injected
    assert root.find(".//evil") is None
    validate_domain_xml(tmp_path, text)
    parsed = xml.Domain.from_xml(text)
    assert parsed.metadata is not None
    assert parsed.metadata.flavor == HOSTILE
    assert parsed.metadata.properties[HOSTILE] == HOSTILE
    assert parsed.metadata.image == HOSTILE


def test_control_characters_are_a_clear_error():
    domain = _domain(FLAVORS[0], kernel=False, volumes=0, chap=False, nics=[],
                     metadata={"note": "bell\x07"})
    with pytest.raises(InvalidRequest, match="control characters"):
        domain.to_xml()


def test_secret_xml_never_holds_a_value():
    text = xml.Secret("virtkit-x-vdb", description="virtkit-x-vdb").to_xml()
    root = xml.parse(text)
    assert root.get("private") == "yes"
    assert root.find("usage").get("type") == "iscsi"
    assert root.find("usage/target").text == "virtkit-x-vdb"
    assert root.find("value") is None


def test_volume_at_vda_is_refused():
    with pytest.raises(InvalidRequest, match="root disk"):
        design.domain_for(
            instance=Instance(uuid=UUID, name="x", flavor=FLAVORS[0], image=ImageRef("/i")),
            virt_type="qemu",
            disks=InstanceDisks(directory="/d", root="/d/disk"),
            volume_disks=[_iscsi_disk("vda", False)], vifs=[], cache_mode=None)


def test_entities_in_parsed_xml_are_not_resolved():
    evil = '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain><name>&x;</name></domain>'
    assert "root:" not in (xml.Domain.from_xml(evil).name or "")


def _template_case(flavor: Flavor, *, kernel: bool, nics: list[Vif], metadata: dict[str, str],
                   uuid: str = UUID, name: str = "vm-1", virt_type: str = "qemu",
                   image: ImageRef | None = None) -> tuple[str, str]:
    """(templated XML, fully built XML) of the same instance."""
    instance = Instance(uuid=uuid, name=name, flavor=flavor,
                        image=image or ImageRef("/img/base.qcow2"), metadata=metadata)
    d = f"/var/lib/virtkit/instances/{uuid}"
    disks = InstanceDisks(
        directory=d, root=f"{d}/disk",
        ephemeral=f"{d}/disk.eph0" if flavor.ephemeral_gb else None,
        swap=f"{d}/disk.swap" if flavor.swap_mb else None,
        kernel=f"{d}/kernel" if kernel else None, ramdisk=f"{d}/ramdisk" if kernel else None)
    args = dict(instance=instance, virt_type=virt_type, disks=disks, volume_disks=[],
                vifs=nics, cache_mode="none")
    return design.domain_xml(**args), design.domain_for(**args).to_xml()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flavor", "kernel", "nics", "virt_type"),
    list(itertools.product(FLAVORS, [False, True], NICS, ["qemu", "kvm", "test"])),
)
def test_template_gives_the_same_xml_as_a_full_build(flavor, kernel, nics, virt_type):
    # The same key twice (second from the cache) and with other per-instance values.
    for uuid, name, meta in ((UUID, "vm-1", {}), ("7c1d1f52-0e0f-4f0e-8f43-2b5a7c3e9d01",
                                                   "other.vm_2", {"b": "2", "a": HOSTILE})):
        templated, full = _template_case(flavor, kernel=kernel, nics=nics, metadata=meta,
                                         uuid=uuid, name=name, virt_type=virt_type)
        assert templated == full


def test_template_values_are_data_and_tokens_are_not_reexpanded(tmp_path):
    # A value holding another field's token stays as given (one-pass substitution).
    meta = {"x": design._DIR, HOSTILE: "]]><evil/>"}
    templated, full = _template_case(FLAVORS[1], kernel=True, nics=NICS[2], metadata=meta,
                                     image=ImageRef(HOSTILE))
    assert templated == full
    assert xml.parse(templated).find(".//evil") is None
    validate_domain_xml(tmp_path, templated)


@pytest.mark.parametrize("name", [HOSTILE, "vm \"q\" 'a' <b> &amp; & ]]> <![CDATA[x]]>"])
def test_hostile_domain_name_is_data_built_and_templated(tmp_path, name):
    # Instance refuses such names (virt.model); xml.py has no policy and must escape them.
    def domain(value: str) -> xml.Domain:
        built = _domain(FLAVORS[1], kernel=True, volumes=1, chap=True, nics=NICS[1],
                        metadata={"k": name})
        built.name = value
        built.metadata.name = value  # type: ignore[union-attr]
        return built

    token = "tok-name-0123456789"
    template = xml.Template(domain(token).to_element(), [token])
    templated = xml.to_text(template.render({token: name})[0], "domain")
    assert templated == domain(name).to_xml()
    root = xml.parse(templated)
    assert root.find("name").text == name
    assert len(root.findall("devices/disk")) == 4 and root.find(".//evil") is None  # root, eph, swap, vol
    parsed = xml.Domain.from_xml(templated)
    assert parsed.name == name and parsed.metadata is not None
    assert parsed.metadata.name == name and parsed.metadata.properties == {"k": name}
    validate_domain_xml(tmp_path, templated)


def test_template_refuses_control_characters_like_a_full_build():
    with pytest.raises(InvalidRequest, match="control characters"):
        _template_case(FLAVORS[0], kernel=False, nics=[], metadata={"note": "bell\x07"})
