"""Fixtures for the smartos driver against the SmartOS simulator: a private simulated global
zone per test module (its own wrappers, state root and image directory), driven through the
local executor and through the SSH executor over the test bed's sshd."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.smartos.driver import SmartOSDriver
from tests.smartos_sim import install, mkimage
from tests.testbed import require
from virt.config import build_conf
from virt.driver import load_driver
from virt.model import Flavor, ImageRef, Instance

REPO = Path(__file__).resolve().parents[3]
SSH_DIR = REPO / ".testbed" / "ssh"


class Sim:
    """One private simulated global zone."""

    def __init__(self, base: Path) -> None:
        self.bin = base / "bin"
        self.root = base / "root"
        self.images = base / "images"
        install.install(self.bin, self.root)
        self.image = mkimage.build(self.images)

    def faults(self, faults: dict[str, object] | None) -> None:
        path = self.root / "faults.json"
        if faults:
            path.write_text(json.dumps(faults))
        elif path.exists():
            path.unlink()

    def zone_root(self, vm_uuid: str) -> Path:
        return self.root / "zones" / vm_uuid / "root"


def ssh_settings() -> dict[str, str]:
    url = os.environ.get("VIRTKIT_TEST_SMARTOS_SSH") or "ssh://root@127.0.0.1:2222"
    key = os.environ.get("VIRTKIT_TEST_SMARTOS_SSH_KEY") or str(SSH_DIR / "client_ed25519")
    known = os.environ.get("VIRTKIT_TEST_SMARTOS_KNOWN_HOSTS") or str(SSH_DIR / "known_hosts")
    require(Path(key).is_file() and (SSH_DIR / "sshd.pid").is_file(), "the ssh service")
    return {"host": url, "ssh_key_file": key, "known_hosts_file": known}


def make_driver(sim: Sim, tmp: Path, how: str, host: str, **opts: object) -> SmartOSDriver:
    smartos = {"bin_dir": str(sim.bin), "image_dir": str(sim.images), "command_timeout": 30,
               "provision_timeout": 60, "reboot_timeout": 5, "poll_interval": 0.3,
               "stopped_event_delay": 0.5, **opts}
    if how == "ssh":
        smartos.update(ssh_settings())
    conf = build_conf(overrides={"state_path": str(tmp), "host": host})
    SmartOSDriver.register_opts(conf)
    for name, value in smartos.items():
        conf.set_override(name, value, group="smartos")
    driver = load_driver("smartos", conf)
    assert isinstance(driver, SmartOSDriver)
    driver.init_host(host=host)
    return driver


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Sim:
    return Sim(tmp_path_factory.mktemp("smartos-sim"))


@pytest.fixture(scope="module", params=["local", "ssh"])
def how(request) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def driver(sim, how, tmp_path_factory) -> Iterator[SmartOSDriver]:
    drv = make_driver(sim, tmp_path_factory.mktemp("state"), how, f"gz-{how}")
    yield drv
    for vm_uuid in drv.list_instance_uuids():
        drv.tools.vm_delete(vm_uuid)
    drv.cleanup_host(host=f"gz-{how}")


@pytest.fixture(autouse=True)
def _no_faults(sim) -> Iterator[None]:
    sim.faults(None)
    yield
    sim.faults(None)


@pytest.fixture
def spawn(driver, sim) -> Iterator[Callable[..., Instance]]:
    """spawn(flavor=..., **spawn_kwargs) -> a spawned instance, destroyed after the test."""
    made: list[Instance] = []

    def _spawn(*, flavor: Flavor | None = None, image: ImageRef | None = None,
               **kwargs: object) -> Instance:
        instance = Instance(uuid=str(uuid.uuid4()), name=f"vk-so-{uuid.uuid4().hex[:8]}",
                            flavor=flavor or Flavor("so.small", 1, 128, 1),
                            image=image or ImageRef(sim.image))
        made.append(instance)
        driver.spawn(instance=instance, **kwargs)
        return instance

    yield _spawn
    for instance in made:
        driver.destroy(instance=instance)
