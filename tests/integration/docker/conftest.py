"""Fixtures for the docker driver against the test bed's real dockerd."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from dockertb import docker_cli, dockerd_up, make_driver

from tests.testbed import env, require
from virt.model import Flavor, ImageRef, Instance

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def docker_image() -> str:
    require(dockerd_up(), "dockerd")
    return env("VIRTKIT_TEST_DOCKER_IMAGE")


@pytest.fixture(scope="session")
def docker_host() -> str:
    """A host name of our own, so that concurrent runs never see each other's containers."""
    return f"dk-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def driver(docker_image, docker_host, tmp_path_factory):
    # Tests wait for STOPPED events: a short debounce keeps them quick (the default's
    # meaning, a reboot is no shutdown, is tested with the default on a driver of its own).
    drv = make_driver(tmp_path_factory, docker_host, reboot_timeout=2, event_window=1.0,
                      stopped_event_delay=1.0)
    yield drv
    for name in drv.list_instances():
        docker_cli("rm", "-f", name, check=False)
    drv.cleanup_host(host=docker_host)


@pytest.fixture(scope="module")
def spawn(driver, docker_image) -> Iterator[Callable[..., Instance]]:
    """spawn(flavor=..., command=..., **spawn_kwargs) -> a running instance, destroyed later."""
    made: list[Instance] = []

    def _spawn(
        *,
        flavor: Flavor | None = None,
        command: str | None = None,
        image: ImageRef | None = None,
        name: str | None = None,
        **kwargs: object,
    ) -> Instance:
        props = {"os_command_line": command} if command else {}
        image = image or ImageRef(docker_image, properties=props)
        instance = Instance(
            uuid=str(uuid.uuid4()),
            name=name or f"vk-dk-{uuid.uuid4().hex[:10]}",
            flavor=flavor or Flavor("dk.small", 1, 64, 0),
            image=image,
        )
        made.append(instance)
        driver.spawn(instance=instance, **kwargs)
        return instance

    yield _spawn
    for instance in made:
        driver.destroy(instance=instance)
