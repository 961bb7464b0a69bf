"""GlusterFS volumes in containers on the real dockerd: host FUSE mount + bind mount at spawn."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from tests.gluster_helpers import gluster_device, gluster_mount
from tests.testbed import env, require
from tests.volumes import CHAP_CONNECTION_INFO
from virt.config import build_conf
from virt.driver.loader import load_driver, load_driver_class
from virt.errors import UnsupportedOperation
from virt.model import BlockDevice, Flavor, ImageRef, Instance, VolumeConnection

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    require(shutil.which("docker") is not None and docker("info").returncode == 0, "dockerd")
    host = f"dk-gl-{uuid.uuid4().hex[:8]}"
    state = tmp_path_factory.mktemp("docker-gluster")
    conf = build_conf(overrides={"state_path": str(state), "host": host})
    load_driver_class("docker").register_opts(conf)
    drv = load_driver("docker", conf)
    drv.init_host(host=host)
    yield drv
    drv.cleanup_host(host=host)


def instance(command: str) -> Instance:
    return Instance(uuid=str(uuid.uuid4()), name=f"vk-dkgl-{uuid.uuid4().hex[:8]}",
                    flavor=Flavor("dk.small", 1, 64, 0),
                    image=ImageRef(env("VIRTKIT_TEST_DOCKER_IMAGE"),
                                   properties={"os_command_line": command}))


def test_a_file_written_in_the_container_is_on_the_gluster_volume(driver):
    mount = gluster_mount()
    name = f"dk-{uuid.uuid4().hex[:10]}"
    inst = instance("sleep 3600")
    driver.spawn(instance=inst, block_devices=[gluster_device(name, "/dev/vdb")])
    mounts = driver._volumes.mounts
    try:
        (point,) = mounts.mounted()  # the host's FUSE mount of the export
        done = docker("exec", inst.name, "sh", "-c", "echo written-inside > /dev/vdb/hello.txt")
        assert done.returncode == 0, done.stderr
        # Seen through the test bed's own mount of the volume: it is on Gluster.
        assert (mount / name / "hello.txt").read_text() == "written-inside\n"
        binds = docker("inspect", "-f", "{{json .HostConfig.Binds}}", inst.name).stdout
        assert f"{point}/{name}:/dev/vdb:rw" in binds
    finally:
        driver.destroy(instance=inst)
        shutil.rmtree(mount / name, ignore_errors=True)
    assert mounts.mounted() == set()  # its last user gone: unmounted


def test_attach_and_iscsi_say_what_is_supported(driver):
    inst = instance("sleep 3600")
    iscsi = BlockDevice(VolumeConnection.from_connection_info(CHAP_CONNECTION_INFO), "/dev/vdb")
    with pytest.raises(UnsupportedOperation, match="GlusterFS volumes at spawn"):
        driver.spawn(instance=inst, block_devices=[iscsi])
    assert not driver.instance_exists(instance=inst)
    with pytest.raises(UnsupportedOperation):
        driver.attach_volume(instance=inst, block_device=gluster_device("x", "/dev/vdb"))
