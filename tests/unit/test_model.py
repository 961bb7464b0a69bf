import pytest

from virt.errors import InvalidRequest
from virt.model import BlockDevice, Flavor, Instance, VolumeConnection, mask_secrets

UUID = "6c1a35b2-53c9-4f7e-9d7c-1f9f3b5f6a10"


def flavor(**kw):
    args = {"name": "m1.tiny", "vcpus": 1, "memory_mb": 512, "root_gb": 1}
    args.update(kw)
    return Flavor(**args)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"memory_mb": -1}, "memory_mb"),
        ({"vcpus": 0}, "vcpus"),
        ({"name": ""}, "name"),
        ({"root_gb": -5}, "root_gb"),
        ({"vcpus": True}, "vcpus"),
    ],
)
def test_flavor_rejects_bad_values(kw, words):
    with pytest.raises(InvalidRequest, match=words):
        flavor(**kw)


def test_instance_rejects_malformed_uuid_and_name():
    with pytest.raises(InvalidRequest, match="not a valid UUID"):
        Instance(uuid="nope", name="vm", flavor=flavor())
    with pytest.raises(InvalidRequest, match="instance name"):
        Instance(uuid=UUID, name="", flavor=flavor())
    with pytest.raises(InvalidRequest, match="instance name"):
        Instance(uuid=UUID, name="<x/>", flavor=flavor())


def test_instance_uuid_is_canonical():
    inst = Instance(uuid=UUID.upper(), name="vm-1", flavor=flavor())
    assert inst.uuid == UUID


def test_connection_info_round_trip_masks_secrets():
    info = {
        "driver_volume_type": "iscsi",
        "serial": "vol-1",
        "data": {"target_iqn": "iqn.x", "auth_method": "CHAP", "auth_username": "u",
                 "auth_password": "s3cret"},
    }
    conn = VolumeConnection.from_connection_info(info)
    assert conn.to_connection_info() == info
    assert "s3cret" not in repr(conn)
    assert conn.masked()["data"]["auth_password"] == "***"
    assert mask_secrets({"a": [{"password": "x"}]}) == {"a": [{"password": "***"}]}


def test_connection_info_errors_are_clear():
    with pytest.raises(InvalidRequest, match="driver_volume_type"):
        VolumeConnection.from_connection_info({"data": {}})
    with pytest.raises(InvalidRequest, match="JSON"):
        VolumeConnection.from_connection_info("{nope")


@pytest.mark.parametrize("info, words", [
    ({"driver_volume_type": "iscsi", "data": ["auth_password"]}, "'data' must be an object"),
    ({"driver_volume_type": "iscsi", "data": "s3cret"}, "'data' must be an object"),
    ({"driver_volume_type": None}, "'driver_volume_type' must be a non-empty string"),
    ({"driver_volume_type": " "}, "'driver_volume_type' must be a non-empty string"),
    ({"driver_volume_type": ["iscsi"]}, "'driver_volume_type' must be a non-empty string"),
    ({"driver_volume_type": "iscsi", "serial": 7}, "'serial' must be a string"),
])
def test_connection_info_of_the_wrong_shape_is_invalid_request(info, words):
    with pytest.raises(InvalidRequest, match=words) as err:
        VolumeConnection.from_connection_info(info)
    assert "s3cret" not in str(err.value)  # the type is named, never the value


def test_connection_info_without_data_has_empty_data():
    conn = VolumeConnection.from_connection_info({"driver_volume_type": "rbd", "data": None})
    assert dict(conn.data) == {} and conn.serial is None


def test_block_device_mountpoint_is_validated():
    conn = VolumeConnection("iscsi", {}, "vol-1")
    assert BlockDevice(connection=conn, mountpoint="/dev/vdb").volume_id == "vol-1"
    with pytest.raises(InvalidRequest, match="mountpoint"):
        BlockDevice(connection=conn, mountpoint="../../etc")
