"""Parsing and validating Nova's iSCSI connection_info."""

from __future__ import annotations

import pytest

from virt.errors import InvalidRequest
from virt.model import VolumeConnection
from virt.volume import IscsiConnector, Portal, connector_for, parse_iscsi_target

IQN = "iqn.2010-10.org.openstack:volume-1"


def info(**data):
    base = {"target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 1}
    base.update(data)
    return {"driver_volume_type": "iscsi", "data": {k: v for k, v in base.items() if v is not None}}


def test_parses_nova_connection_info():
    target = parse_iscsi_target(info(volume_id="v1"))
    assert target.portal == Portal("192.0.2.10", 3260)
    assert (target.target_iqn, target.target_lun, target.auth_method) == (IQN, 1, None)
    assert target.source_name == f"{IQN}/1"
    assert target.volume_id == "v1"


@pytest.mark.parametrize(("text", "host", "port"), [
    ("10.0.0.1", "10.0.0.1", 3260),
    ("storage.example.org:3261", "storage.example.org", 3261),
    ("[2001:db8::1]:3262", "2001:db8::1", 3262),
    ("2001:db8::1", "2001:db8::1", 3260),
])
def test_portal_forms(text, host, port):
    assert Portal.parse(text) == Portal(host, port)


@pytest.mark.parametrize(("data", "field"), [
    ({"target_portal": None}, "target_portal"),
    ({"target_iqn": None}, "target_iqn"),
    ({"target_lun": None}, "target_lun"),
    ({"target_portal": "10.0.0.1:99999"}, "target_portal"),
    ({"target_portal": "bad host!:3260"}, "target_portal"),
    ({"target_iqn": "not-an-iqn"}, "target_iqn"),
    ({"target_iqn": "iqn.2010-10.org.x/../etc"}, "target_iqn"),
    ({"target_lun": "one"}, "target_lun"),
    ({"target_lun": -1}, "target_lun"),
    ({"auth_method": "KERBEROS"}, "auth_method"),
    ({"auth_method": "CHAP", "auth_password": "x"}, "auth_username"),
    ({"auth_method": "CHAP", "auth_username": "u"}, "auth_password"),
])
def test_bad_fields_are_named(data, field):
    with pytest.raises(InvalidRequest) as err:
        parse_iscsi_target(info(**data))
    assert f"'{field}'" in str(err.value)


def test_chap_secret_never_in_repr_or_str():
    target = parse_iscsi_target(info(auth_method="CHAP", auth_username="u", auth_password="s3cr3t-pw"))
    assert target.uses_chap and target.auth_password == "s3cr3t-pw"
    for text in (repr(target), str(target), repr(VolumeConnection.from_connection_info(
            info(auth_method="CHAP", auth_username="u", auth_password="s3cr3t-pw")))):
        assert "s3cr3t-pw" not in text


def test_multipath_lists():
    target = parse_iscsi_target(info(
        target_portal=None, target_iqn=None, target_lun=None,
        target_portals=["10.0.0.1:3260", "10.0.0.2:3260"], target_iqns=[IQN, IQN],
        target_luns=[1, 1]))
    assert target.portal == Portal("10.0.0.1")
    assert [str(p.portal) for p in target.all_paths()] == ["10.0.0.1:3260", "10.0.0.2:3260"]


def test_multipath_lists_must_match():
    with pytest.raises(InvalidRequest, match="target_luns"):
        parse_iscsi_target(info(target_portals=["10.0.0.1"], target_iqns=[IQN]))
    with pytest.raises(InvalidRequest, match="differ in length"):
        parse_iscsi_target(info(target_portals=["10.0.0.1"], target_iqns=[IQN, IQN],
                                target_luns=[1]))


def test_wrong_protocol_and_registry():
    with pytest.raises(InvalidRequest, match="not 'iscsi'"):
        parse_iscsi_target({"driver_volume_type": "rbd", "data": {}})
    conn = VolumeConnection.from_connection_info(info())
    assert isinstance(connector_for(conn), IscsiConnector)
    with pytest.raises(InvalidRequest, match="supported: glusterfs, iscsi"):
        connector_for(VolumeConnection("nfs", {}))
