"""Instance/flavor/image -> container arguments, and container state -> PowerState."""

from __future__ import annotations

import pytest

from drivers.docker import spec, states
from drivers.docker.forced import ForcedStops
from virt.errors import InvalidRequest
from virt.model import Flavor, ImageRef, PowerState, Vif

MIB = 1024 * 1024


def test_flavor_limits_map_cpu_memory_and_swap():
    limits = spec.flavor_limits(Flavor("f", 2, 256, 10, swap_mb=64), host_cpus=4,
                                root_disk_limit=False)
    assert limits.nano_cpus == 2_000_000_000
    assert limits.mem_limit == 256 * MIB
    assert limits.memswap_limit == 320 * MIB
    assert limits.storage_size is None  # not enforceable: not requested either
    assert "storage_opt" not in limits.host_config()


def test_flavor_root_gb_becomes_a_size_limit_where_supported():
    limits = spec.flavor_limits(Flavor("f", 1, 64, 10), host_cpus=1, root_disk_limit=True)
    assert limits.host_config()["storage_opt"] == {"size": "10G"}


def test_no_swap_means_memswap_equals_memory():
    limits = spec.flavor_limits(Flavor("f", 1, 64, 0), host_cpus=1, root_disk_limit=False)
    assert limits.memswap_limit == limits.mem_limit


@pytest.mark.parametrize(
    "flavor, text",
    [
        (Flavor("big", 9, 64, 0), "9 vCPUs but this host has 8"),
        (Flavor("small", 1, 5, 0), "5 MB of memory"),
        (Flavor("eph", 1, 64, 0, ephemeral_gb=1), "ephemeral"),
    ],
)
def test_inexpressible_flavors_are_refused_by_name(flavor, text):
    with pytest.raises(InvalidRequest, match=text) as err:
        spec.flavor_limits(flavor, host_cpus=8, root_disk_limit=False)
    assert repr(flavor.name) in err.value.message


@pytest.mark.parametrize("name", ["ab", "web-1", "a.b_c", "0x"])
def test_container_names_docker_accepts(name):
    assert spec.validate_container_name(name) == name


@pytest.mark.parametrize("name", ["a", "-ab", "a b", "ä1"])
def test_container_names_docker_refuses(name):
    with pytest.raises(InvalidRequest, match="docker container"):
        spec.validate_container_name(name)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("snap", ("snap", "latest")),
        ("virtkit/snap:v1", ("virtkit/snap", "v1")),
        ("localhost:5000/a/b:2024.06", ("localhost:5000/a/b", "2024.06")),
    ],
)
def test_snapshot_names(name, expected):
    assert spec.parse_image_name(name) == expected


@pytest.mark.parametrize("name", ["Upper/case", "a b", "x:", "x:-bad", "/lead"])
def test_bad_snapshot_names(name):
    with pytest.raises(InvalidRequest):
        spec.parse_image_name(name)


def test_image_formats_and_command():
    assert spec.image_name(ImageRef("busybox:1", disk_format="docker")) == "busybox:1"
    with pytest.raises(InvalidRequest, match="qcow2"):
        spec.image_name(ImageRef("/var/disk.qcow2", disk_format="qcow2"))
    image = ImageRef("x", properties={"os_command_line": "sh -c 'echo hi; sleep 1'"})
    assert spec.image_command(image) == ["sh", "-c", "echo hi; sleep 1"]
    assert spec.image_command(ImageRef("x")) is None
    with pytest.raises(InvalidRequest, match="os_command_line"):
        spec.image_command(ImageRef("x", properties={"os_command_line": "sh -c 'open"}))


def test_one_vif_at_most():
    vif = Vif("v1", "52:54:00:12:34:56")
    assert spec.mac_address([vif]) == "52:54:00:12:34:56"
    assert spec.mac_address([]) is None
    with pytest.raises(InvalidRequest, match="one interface"):
        spec.mac_address([vif, Vif("v2", "52:54:00:12:34:57")])


def test_root_disk_limit_by_storage_driver():
    ext4 = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]}
    supported, reason = spec.root_disk_limit(ext4)
    assert not supported and "extfs" in reason and "pquota" in reason
    assert spec.root_disk_limit({"Driver": "overlay2",
                                 "DriverStatus": [["Backing Filesystem", "xfs"]]})[0]
    assert spec.root_disk_limit({"Driver": "btrfs"})[0]


@pytest.mark.parametrize(
    "state, expected",
    [
        ({"Status": "running", "Running": True}, PowerState.RUNNING),
        ({"Status": "paused", "Running": True, "Paused": True}, PowerState.PAUSED),
        ({"Status": "created"}, PowerState.SHUTDOWN),
        ({"Status": "exited", "ExitCode": 0}, PowerState.SHUTDOWN),
        ({"Status": "exited", "ExitCode": 143}, PowerState.SHUTDOWN),
        # SIGKILL: a crash unless the driver forced the stop itself (see below).
        ({"Status": "exited", "ExitCode": 137}, PowerState.CRASHED),
        ({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, PowerState.CRASHED),
        ({"Status": "exited", "ExitCode": 3}, PowerState.CRASHED),
        ({"Status": "exited", "ExitCode": 0, "Error": "oci runtime"}, PowerState.CRASHED),
        ({"Status": "dead"}, PowerState.CRASHED),
    ],
)
def test_inspect_state_to_power_state(state, expected):
    assert states.from_inspect(state) is expected


def test_sigkill_is_a_stop_only_when_the_driver_forced_it():
    killed = {"Status": "exited", "ExitCode": 137, "StartedAt": "t1"}
    assert states.from_inspect(killed, forced=True) is PowerState.SHUTDOWN
    assert states.from_inspect({**killed, "OOMKilled": True}, forced=True) is PowerState.CRASHED
    assert states.from_inspect({**killed, "ExitCode": 3}, forced=True) is PowerState.CRASHED
    assert states.needs_inspect("exited") and states.needs_inspect("dead")
    assert not states.needs_inspect("running") and not states.needs_inspect("created")


def test_forced_stop_record_is_per_run_and_persisted(tmp_path):
    path = tmp_path / "docker" / "forced.json"
    record = ForcedStops(path)
    record.record("c1", "t1")
    record.record("c2", "t9", persist=False)
    assert record.matches("c1", "t1") and not record.matches("c1", "t2")
    assert record.has("c2") and not record.has("c3")
    other = ForcedStops(path)  # a restarted service: only what outlives the container
    assert other.matches("c1", "t1") and not other.has("c2")
    other.forget("c1")
    assert not record.has("c1")  # the change on disk is seen by the first one
    assert ForcedStops(None).has("c1") is False


def test_list_entry_state_reads_the_exit_code():
    assert states.from_list_entry({"State": "exited", "Status": "Exited (139) 2 seconds ago"}) \
        is PowerState.CRASHED
    assert states.from_list_entry({"State": "exited", "Status": "Exited (143) 1 hour ago"}) \
        is PowerState.SHUTDOWN
    assert states.from_list_entry({"State": "exited", "Status": "Exited (137) 1 hour ago"}) \
        is PowerState.CRASHED
    assert states.from_list_entry({"State": "running", "Status": "Up 3 s"}) is PowerState.RUNNING
