import pytest

from virt.errors import InvalidRequest
from virt.model import (
    BlockDevice,
    Flavor,
    HostResources,
    ImageRef,
    Instance,
    InstanceInfo,
    PowerState,
    Vif,
    VolumeConnection,
    mask_secrets,
)

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


def test_flavor_sizes_are_bounded():
    assert flavor(vcpus=4096, memory_mb=16 * 1024 * 1024, root_gb=1024 * 1024,
                  ephemeral_gb=1024 * 1024, swap_mb=16 * 1024 * 1024).vcpus == 4096
    for kw in ({"vcpus": 4097}, {"memory_mb": 16 * 1024 * 1024 + 1},
               {"root_gb": 1024 * 1024 + 1}, {"ephemeral_gb": 10**20}, {"swap_mb": 10**12}):
        with pytest.raises(InvalidRequest, match=f"{next(iter(kw))} must be at most") as err:
            flavor(**kw)
        assert "16 TiB" in str(err.value)


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


def test_non_string_names_are_invalid_requests_not_type_errors():
    for make in (lambda: flavor(name=5), lambda: flavor(name=None),
                 lambda: Instance(uuid=UUID, name=5, flavor=flavor()),
                 lambda: Instance(uuid=UUID, name=None, flavor=flavor()),
                 lambda: ImageRef(ref=5), lambda: ImageRef(ref=["x"]),
                 lambda: ImageRef("cirros", kernel=3),
                 lambda: Vif(id=7, address="52:54:00:12:34:56"),
                 lambda: Vif(id="v", address=0x525400123456),
                 lambda: BlockDevice(VolumeConnection("iscsi", {}), mountpoint=None),
                 lambda: flavor(extra_specs=["hw:cpu"])):
        with pytest.raises(InvalidRequest):
            make()


def test_instance_flavor_and_image_are_type_checked():
    with pytest.raises(InvalidRequest, match="flavor must be a Flavor, got NoneType"):
        Instance(uuid=UUID, name="vm", flavor=None)
    with pytest.raises(InvalidRequest, match="flavor must be a Flavor, got dict"):
        Instance(uuid=UUID, name="vm", flavor={"name": "m1.tiny"})
    with pytest.raises(InvalidRequest, match="image must be an ImageRef"):
        Instance(uuid=UUID, name="vm", flavor=flavor(), image="cirros")
    with pytest.raises(InvalidRequest, match="host"):
        Instance(uuid=UUID, name="vm", flavor=flavor(), host=1)


def test_instance_info_needs_a_power_state_and_non_negative_counters():
    assert InstanceInfo(PowerState.UNKNOWN).state is PowerState.UNKNOWN
    assert InstanceInfo(PowerState.SHUTDOWN, "-1", 0, 0, 1, 0).num_cpu == 1
    with pytest.raises(InvalidRequest, match="must be a PowerState"):
        InstanceInfo("running")
    with pytest.raises(InvalidRequest, match="max_mem_kb must be a non-negative integer"):
        InstanceInfo(PowerState.RUNNING, max_mem_kb=-1)
    with pytest.raises(InvalidRequest, match="num_cpu"):
        InstanceInfo(PowerState.RUNNING, num_cpu=True)
    with pytest.raises(InvalidRequest, match="internal_id"):
        InstanceInfo(PowerState.RUNNING, internal_id=5)


def resources(**kw):
    args = {"vcpus": 4, "memory_mb": 8192, "local_gb": 100, "vcpus_used": 0,
            "memory_mb_used": 0, "local_gb_used": 0, "hypervisor_type": "fake",
            "hypervisor_version": 1, "hypervisor_hostname": "h"}
    args.update(kw)
    return HostResources(**args)


def test_host_resources_are_validated():
    # zero capacity (an engine that reports none) and an overcommitted disk are valid
    assert resources(vcpus=0, memory_mb=0, local_gb=0).vcpus == 0
    assert resources(disk_available_least=-20).disk_available_least == -20
    listed = resources(supported_instances=[["x86_64", "kvm", "hvm"]])
    assert listed.supported_instances == (("x86_64", "kvm", "hvm"),)
    for kw, words in [({"vcpus": -1}, "vcpus must be a non-negative"),
                      ({"memory_mb_used": -5}, "memory_mb_used"),
                      ({"local_gb": 1.5}, "local_gb"),
                      ({"hypervisor_version": None}, "hypervisor_version"),
                      ({"hypervisor_type": ""}, "hypervisor_type"),
                      ({"hypervisor_hostname": None}, "hypervisor_hostname"),
                      ({"cpu_info": {}}, "cpu_info"),
                      ({"disk_available_least": "5"}, "disk_available_least"),
                      ({"supported_instances": ["kvm"]}, "supported_instances"),
                      ({"supported_instances": [("x86_64", "kvm")]}, "supported_instances")]:
        with pytest.raises(InvalidRequest, match=words):
            resources(**kw)
