"""`iscsi_attach = host`: os-brick's connector behind the driver's volume interface.

No kernel initiator (iscsi_tcp) runs on the test bed, so os-brick's connector is replaced at
its boundary, the factory (`InitiatorConnector.factory`), by `FakeBrick`, which records what
it is asked and returns a block device path like os-brick does. Everything around it is real:
the portal probe (a listening socket, or libiscsi against the test bed's tgtd), libvirt
(qemu:///system: domains are defined, never started), virt-xml-validate. os-brick itself is
never imported here, so these tests run without the extra installed.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from drivers.libvirt import design, volumes_host, xml
from drivers.libvirt.driver import LibvirtDriver
from drivers.libvirt.images import InstanceDisks
from tests.iscsi_target import TargetFactory, tgtd_available
from tests.libvirt_helpers import libvirt_up, qemu_workdir, validate_domain_xml
from tests.testbed import require
from virt.config import build_conf
from virt.errors import ConfigError, VolumeError, VolumeUnreachable
from virt.model import BlockDevice, Flavor, ImageRef, Instance, VolumeConnection

ROOT = Path(__file__).resolve().parents[3]
INITIATOR = "iqn.2024-01.org.virtkit.test:host-initiator"
PASSWORD = "s3cr3t-CHAP-pw-Zq9"
IQN = "iqn.2024-01.org.example:vol-host"


class FakeBrick:
    """os-brick's ISCSIConnector as the driver sees it: records calls, returns a device."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.factory_args: list[tuple[Any, ...]] = []
        self.connect_error: Exception | None = None
        self.fail_after = None  # connect succeeds this many times, then raises connect_error
        self.result: dict[str, Any] | None = None
        self._next = 0

    def factory(self, protocol, root_helper, *args, **kwargs):
        self.factory_args.append((protocol, root_helper, args, kwargs))
        return self

    def get_connector_properties(self, root_helper, *args, **kwargs) -> dict[str, Any]:
        return {"initiator": INITIATOR}

    def connect_volume(self, connection_properties: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("connect", copy.deepcopy(connection_properties)))
        connects = sum(1 for c in self.calls if c[0] == "connect")
        if self.connect_error is not None and (self.fail_after is None
                                               or connects > self.fail_after):
            raise self.connect_error
        if self.result is not None:
            return self.result
        self._next += 1
        return {"type": "block", "scsi_wwn": f"36001405{self._next:08x}",
                "path": f"/dev/sd{'abcdefgh'[self._next % 8]}"}

    def disconnect_volume(self, connection_properties, device_info, force=False,
                          ignore_errors=False) -> None:
        self.calls.append(("disconnect", (copy.deepcopy(connection_properties),
                                          copy.deepcopy(device_info), force)))

    def of(self, kind: str) -> list[Any]:
        return [args for name, args in self.calls if name == kind]


@pytest.fixture
def brick(monkeypatch):
    """FakeBrick injected as os-brick's factory, and a host that has what host mode needs."""
    fake = FakeBrick()
    monkeypatch.setattr(volumes_host, "os_brick_factory", lambda lock_path: fake.factory)
    monkeypatch.setattr(volumes_host, "missing_requirements", lambda: [])
    return fake


@pytest.fixture
def portal():
    """A real listening TCP portal (the probe without libiscsi only connects)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def _bdm(portal: str, dev: str = "vdb", chap: bool = True, **data: Any) -> BlockDevice:
    info: dict[str, Any] = {"target_portal": portal, "target_iqn": IQN, "target_lun": 1,
                            "volume_id": "vol-1"}
    if chap:
        info.update(auth_method="CHAP", auth_username="chapuser", auth_password=PASSWORD)
    info.update(data)
    return BlockDevice(VolumeConnection("iscsi", info, serial="vol-1"), f"/dev/{dev}")


def _instance(image: ImageRef | None = None) -> Instance:
    uid = str(uuid.uuid4())
    return Instance(uuid=uid, name=f"hostiscsi-{uid[:6]}", flavor=Flavor("tiny", 1, 64, 1),
                    image=image)


@pytest.fixture
def no_libiscsi(monkeypatch):
    """The probe without libiscsi: a bounded TCP connect to the portal."""
    monkeypatch.setattr(volumes_host.libiscsi, "available", lambda: False)


def _volumes(**kw: Any) -> volumes_host.IscsiHostVolumes:
    return volumes_host.IscsiHostVolumes(probe_timeout=3, lock_path="/nonexistent-lock-dir", **kw)


# -- the connector on its own ---------------------------------------------------------------

def test_prepare_connects_with_the_connection_data_and_maps_a_raw_block_disk(
        brick, portal, no_libiscsi, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    volumes = _volumes()
    bdm = _bdm(portal)
    prepared = volumes.prepare(_instance(), bdm, cache="none")

    assert brick.factory_args == [("ISCSI", volumes_host.ROOT_HELPER, (),
                                   {"use_multipath": False})]
    assert brick.of("connect") == [dict(bdm.connection.data)]  # CHAP goes to os-brick only
    path = "/dev/sdb"
    disk = prepared.disk
    assert (disk.source_type, disk.source_path, disk.driver_type, disk.cache) == \
        ("block", path, "raw", "none")
    assert prepared.secret_usage is None and disk.auth_username is None
    element = xml.etree.tostring(disk.to_element(), encoding="unicode")
    assert f"<source dev=\"{path}\"/>" in element and "<auth" not in element
    assert xml.Disk.from_element(disk.to_element()) == disk

    # The whole domain with the volume is one libvirt accepts.
    base = tmp_path / "disk"
    base.write_bytes(b"")
    domain = design.domain_xml(instance=_instance(ImageRef(str(base))), virt_type="qemu",
                               disks=InstanceDisks(directory=str(tmp_path), root=str(base)),
                               volume_disks=[disk], vifs=(), cache_mode="none")
    validate_domain_xml(tmp_path, domain)
    assert f"dev=\"{path}\"" in domain or f"dev='{path}'" in domain
    for text in (domain, caplog.text):
        assert PASSWORD not in text and "chapuser" not in domain


def test_initiator_comes_from_os_brick_connector_properties(brick):
    assert _volumes().initiator == INITIATOR


def test_release_and_disconnect_hand_os_brick_the_same_data_and_device(brick, portal,
                                                                      no_libiscsi):
    volumes = _volumes()
    one, two = _bdm(portal, "vdb"), _bdm(portal, "vdc", target_lun=2)
    disk_one = volumes.prepare(_instance(), one, cache=None).disk
    volumes.prepare(_instance(), two, cache=None)
    connected = brick.of("connect")

    volumes.release([disk_one])
    props, info, _force = brick.of("disconnect")[0]
    assert props == connected[0] and info["path"] == disk_one.source_path
    volumes.release([disk_one])  # already released: nothing more
    assert len(brick.of("disconnect")) == 1

    volumes.disconnect([two])
    props, info, _force = brick.of("disconnect")[1]
    assert props == connected[1] and info["type"] == "block"

    # A process that did not connect it (after a restart) disconnects by connection_info.
    fresh = _volumes()
    fresh.disconnect([one])
    props, info, _force = brick.of("disconnect")[2]
    assert props == dict(one.connection.data) and info is None


def test_os_brick_failure_is_a_volume_error_without_the_password(brick, portal, no_libiscsi,
                                                                 caplog):
    caplog.set_level(logging.DEBUG)
    brick.connect_error = RuntimeError(
        f"Unexpected error: iscsiadm -m node --op update -n node.session.auth.password "
        f"-v {PASSWORD}: exit 24")
    with pytest.raises(VolumeError) as err:
        _volumes().prepare(_instance(), _bdm(portal), cache=None)
    assert PASSWORD not in str(err.value) and "***" in str(err.value)
    assert "RuntimeError" in str(err.value)
    assert PASSWORD not in caplog.text


def test_a_result_without_a_block_path_is_disconnected_and_refused(brick, portal, no_libiscsi):
    brick.result = {"type": "file", "path": "relative"}
    with pytest.raises(VolumeError, match="no block device path"):
        _volumes().prepare(_instance(), _bdm(portal), cache=None)
    assert len(brick.of("disconnect")) == 1


def test_an_unreachable_portal_is_refused_before_os_brick_logs_in(brick, no_libiscsi):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(VolumeUnreachable):
        _volumes().prepare(_instance(), _bdm(f"127.0.0.1:{port}"), cache=None)
    assert brick.of("connect") == []


def test_a_lun_already_connected_by_this_host_is_refused(brick, portal, no_libiscsi):
    volumes = _volumes()
    volumes.prepare(_instance(), _bdm(portal), cache=None)
    with pytest.raises(VolumeError, match="already connected"):
        volumes.prepare(_instance(), _bdm(portal, "vdc"), cache=None)
    assert len(brick.of("connect")) == 1


def test_the_real_libiscsi_probe_uses_os_brick_initiator(brick, lun_factory):
    """With libiscsi, CHAP and initiator ACLs are checked (typed errors) before login."""
    require(volumes_host.libiscsi.available(), "libiscsi")
    lun = lun_factory.create(size_mb=8, chap=True, initiators=[INITIATOR])
    bdm = BlockDevice(VolumeConnection.from_connection_info(lun.connection_info()), "/dev/vdb")
    prepared = _volumes().prepare(_instance(), bdm, cache=None)
    assert prepared.disk.source_type == "block"
    assert brick.of("connect") == [dict(bdm.connection.data)]


def test_native_and_host_mode_construction_import_no_os_brick():
    code = (
        "import sys\n"
        "from virt.config import build_conf\n"
        "from drivers.libvirt.driver import LibvirtDriver\n"
        "for mode in ('native', 'host'):\n"
        "    conf = build_conf(overrides={'state_path': sys.argv[1]})\n"
        "    LibvirtDriver.register_opts(conf)\n"
        "    conf.set_override('connection_uri', 'test:///default', group='libvirt')\n"
        "    conf.set_override('iscsi_attach', mode, group='libvirt')\n"
        "    LibvirtDriver(conf)\n"
        "assert 'os_brick' not in sys.modules, 'os_brick imported'\n"
    )
    with tempfile.TemporaryDirectory() as state:
        done = subprocess.run([sys.executable, "-c", code, state], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


# -- what init_host checks ------------------------------------------------------------------

@pytest.fixture
def host_env(monkeypatch, tmp_path):
    """A host whose PATH, /sys/module and os-brick the test decides."""
    bin_dir, sys_module = tmp_path / "bin", tmp_path / "sys-module"
    bin_dir.mkdir()
    sys_module.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(volumes_host, "SYS_MODULE", str(sys_module))
    monkeypatch.setattr(volumes_host, "SBIN_DIRS", ())

    class Env:
        def tool(self, name: str, script: str = "exit 0") -> None:
            path = bin_dir / name
            path.write_text(f"#!/bin/sh\n{script}\n")
            path.chmod(0o755)

        def module_loaded(self) -> None:
            (sys_module / "iscsi_tcp").mkdir()

        def os_brick(self, installed: bool) -> None:
            if installed:
                monkeypatch.setattr(volumes_host, "_import_os_brick", lambda: FakeBrick().factory)
            else:
                for name in ("os_brick", "os_brick.initiator", "os_brick.initiator.connector"):
                    monkeypatch.setitem(sys.modules, name, None)

    return Env()


def _host_driver(tmp_path: Path) -> LibvirtDriver:
    conf = build_conf(overrides={"state_path": str(tmp_path / "state"), "host": "h"})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    conf.set_override("iscsi_attach", "host", group="libvirt")
    return LibvirtDriver(conf)


def test_init_host_names_a_missing_os_brick(host_env, tmp_path):
    host_env.os_brick(False)
    host_env.tool("iscsiadm")
    host_env.module_loaded()
    with pytest.raises(ConfigError) as err:
        _host_driver(tmp_path).init_host(host="h")
    text = str(err.value)
    assert "os-brick is not installed" in text and "virtkit[libvirt-host-iscsi]" in text
    assert "iscsiadm" not in text and "iscsi_tcp" not in text


def test_init_host_names_a_missing_iscsiadm(host_env, tmp_path):
    host_env.os_brick(True)
    host_env.module_loaded()
    with pytest.raises(ConfigError) as err:
        _host_driver(tmp_path).init_host(host="h")
    text = str(err.value)
    assert "iscsiadm is not on PATH" in text and "open-iscsi" in text
    assert "os-brick is not installed" not in text and "iscsi_tcp" not in text


def test_init_host_names_a_missing_iscsi_tcp(host_env, tmp_path):
    host_env.os_brick(True)
    host_env.tool("iscsiadm")
    with pytest.raises(ConfigError, match="iscsi_tcp .*no modprobe"):
        _host_driver(tmp_path).init_host(host="h")
    host_env.tool("modprobe", "echo \"modprobe: FATAL: Module iscsi_tcp not found in "
                  "directory /lib/modules/x\" >&2; exit 1")
    with pytest.raises(ConfigError) as err:
        _host_driver(tmp_path).init_host(host="h")
    assert "iscsi_tcp" in str(err.value) and "Module iscsi_tcp not found" in str(err.value)
    assert "iscsi_attach = native" in str(err.value)


def test_init_host_names_everything_missing_at_once(host_env, tmp_path):
    host_env.os_brick(False)
    with pytest.raises(ConfigError) as err:
        _host_driver(tmp_path).init_host(host="h")
    text = str(err.value)
    assert "os-brick" in text and "iscsiadm" in text and "iscsi_tcp" in text


def test_init_host_passes_where_the_host_has_everything(host_env, tmp_path):
    host_env.os_brick(True)
    host_env.tool("iscsiadm")
    host_env.tool("modprobe")  # modprobe -n iscsi_tcp: loadable
    drv = _host_driver(tmp_path)
    try:
        drv.init_host(host="h")
    finally:
        drv.cleanup_host(host="h")


def test_this_machine_lacks_iscsi_tcp_and_says_so():
    """TESTBED.md: no kernel initiator here. The real check, in a process of its own (it
    imports os-brick where that is installed). Where iscsi_tcp is usable, nothing to show."""
    if os.path.isdir("/sys/module/iscsi_tcp"):
        pytest.skip("this machine has iscsi_tcp loaded")
    code = ("from drivers.libvirt import volumes_host\n"
            "try:\n"
            "    volumes_host.check_requirements()\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    if "iscsi_tcp" not in done.stdout:
        pytest.skip(f"iscsi_tcp is loadable on this machine: {done.stdout.strip()}")
    assert done.stdout.startswith("ConfigError [libvirt] iscsi_attach = host"), done.stdout
    assert "the kernel module iscsi_tcp" in done.stdout


# -- through the driver, on real libvirt (defined, never started) ---------------------------

@pytest.fixture
def qemu_driver(brick, tmp_path):
    require(libvirt_up(), "libvirtd with qemu:///system")
    # state where QEMU's user reaches it (init_host refuses a path it cannot traverse)
    with qemu_workdir("vk-hostiscsi-") as work:
        conf = build_conf(overrides={"state_path": str(work / "state"), "host": "h"})
        LibvirtDriver.register_opts(conf)
        conf.set_override("connection_uri", "qemu:///system", group="libvirt")
        conf.set_override("virt_type", "qemu", group="libvirt")
        conf.set_override("iscsi_attach", "host", group="libvirt")
        conf.set_override("disk_cachemode", "writeback", group="libvirt")
        drv = LibvirtDriver(conf)
        drv.init_host(host="h")
        made: list[Instance] = []
        yield drv, made
        for instance in made:
            drv.destroy(instance=instance)
        drv.cleanup_host(host="h")


@pytest.fixture
def lun_factory(tmp_path):
    require(tgtd_available(), "tgtd (iSCSI target)")
    (tmp_path / "luns").mkdir()
    factory = TargetFactory(tmp_path / "luns",
                            os.environ.get("VIRTKIT_TEST_ISCSI_PORTAL", "127.0.0.1:3260"))
    yield factory
    factory.cleanup()


def _image(tmp_path: Path) -> ImageRef:
    path = tmp_path / "base.raw"
    with open(path, "wb") as handle:
        handle.truncate(1 << 20)
    return ImageRef(str(path), disk_format="raw")


def _lun_bdm(lun, dev: str) -> BlockDevice:
    return BlockDevice(VolumeConnection.from_connection_info(lun.connection_info()), f"/dev/{dev}")


def _dumpxml(uid: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", uid],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def _secrets() -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "secret-list"], capture_output=True,
                          text=True, timeout=30, check=False).stdout


def test_spawn_attach_detach_destroy_connect_and_disconnect(qemu_driver, lun_factory, brick,
                                                            tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    drv, made = qemu_driver
    lun_b, lun_c = lun_factory.create(size_mb=8, chap=True), lun_factory.create(size_mb=8, chap=True)
    bdm_b, bdm_c = _lun_bdm(lun_b, "vdb"), _lun_bdm(lun_c, "vdc")
    instance = _instance(_image(tmp_path))
    made.append(instance)

    drv.spawn(instance=instance, block_devices=[bdm_b], power_on=False)
    assert brick.of("connect") == [dict(bdm_b.connection.data)]
    path_b = "/dev/sdb"
    defined = _dumpxml(instance.uuid)
    disk = next(d for d in xml.Domain.from_xml(defined).disks if d.target_dev == "vdb")
    assert (disk.source_type, disk.source_path, disk.driver_type) == ("block", path_b, "raw")
    validate_domain_xml(tmp_path, defined)

    drv.attach_volume(instance=instance, block_device=bdm_c)
    assert brick.of("connect")[1] == dict(bdm_c.connection.data)
    defined = _dumpxml(instance.uuid)
    disk_c = next(d for d in xml.Domain.from_xml(defined).disks if d.target_dev == "vdc")
    assert disk_c.source_type == "block" and disk_c.source_path == "/dev/sdc"
    validate_domain_xml(tmp_path, defined)
    assert drv.get_volume_connector().initiator == INITIATOR

    drv.detach_volume(instance=instance, block_device=bdm_c)
    assert all(d.target_dev != "vdc" for d in xml.Domain.from_xml(_dumpxml(instance.uuid)).disks)
    props, info, _force = brick.of("disconnect")[0]
    assert props == dict(bdm_c.connection.data) and info["path"] == "/dev/sdc"

    drv.destroy(instance=instance, block_devices=[bdm_b])
    props, info, force = brick.of("disconnect")[1]
    assert props == dict(bdm_b.connection.data) and info["path"] == path_b and force

    for text in (defined, caplog.text, _secrets()):
        assert lun_b.password not in text and lun_c.password not in text
    assert instance.uuid not in _secrets()  # host mode makes no libvirt secret


def test_spawn_rollback_disconnects_what_it_connected(qemu_driver, lun_factory, brick, tmp_path,
                                                      caplog):
    caplog.set_level(logging.DEBUG)
    drv, _made = qemu_driver
    lun_b, lun_c = lun_factory.create(size_mb=8, chap=True), lun_factory.create(size_mb=8, chap=True)
    bdm_b, bdm_c = _lun_bdm(lun_b, "vdb"), _lun_bdm(lun_c, "vdc")
    brick.connect_error, brick.fail_after = RuntimeError("login failed"), 1
    instance = _instance(_image(tmp_path))
    with pytest.raises(VolumeError, match="login failed"):
        drv.spawn(instance=instance, block_devices=[bdm_b, bdm_c], power_on=False)
    assert brick.of("connect") == [dict(bdm_b.connection.data),
                                                 dict(bdm_c.connection.data)]
    (props, info, _force), = brick.of("disconnect")
    assert props == dict(bdm_b.connection.data) and info["path"] == "/dev/sdb"
    assert not drv.instance_exists(instance=instance)
    assert not (tmp_path / "state" / "instances" / instance.uuid).exists()
    assert lun_b.password not in caplog.text and lun_c.password not in caplog.text


def test_a_failed_attach_disconnects(qemu_driver, lun_factory, brick, tmp_path):
    drv, made = qemu_driver
    instance = _instance(_image(tmp_path))
    made.append(instance)
    drv.spawn(instance=instance, power_on=False)
    lun = lun_factory.create(size_mb=8)
    # libvirt refuses the bus: the attach fails after os-brick connected.
    bdm = BlockDevice(VolumeConnection.from_connection_info(lun.connection_info()), "/dev/vdb",
                      disk_bus="no-such-bus")
    with pytest.raises(VolumeError):
        drv.attach_volume(instance=instance, block_device=bdm)
    assert len(brick.of("connect")) == 1
    (props, info, _force), = brick.of("disconnect")
    assert props == dict(bdm.connection.data) and info["path"] == "/dev/sdb"
