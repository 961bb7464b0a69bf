"""Fixtures of the conformance suite (registered by the plugin only when it is active).

The suite shares guests where it can: one running instance for read-only tests, one
"workbench" instance that mutating tests bring back to RUNNING, and fresh instances only
where a test must own the whole lifecycle. Everything created is destroyed at the end, even
after failures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from virt.conformance.bounded import BoundedDriver
from virt.conformance.observers import NotObserved, Observer
from virt.conformance.settings import SuiteSettings
from virt.driver import ComputeDriver
from virt.errors import VirtError
from virt.model import Instance, PowerState, new_uuid

LOG = logging.getLogger(__name__)
T = TypeVar("T")


class Guests:
    """Creates the suite's instances, remembers them, and brings them back to RUNNING."""

    def __init__(self, driver: BoundedDriver, settings: SuiteSettings) -> None:
        self.driver = driver
        self.settings = settings
        self.created: dict[str, Instance] = {}

    def new(self, tag: str) -> Instance:
        """A new Instance (not spawned) with the suite's image, destroyed at the end of the
        run; a test that needs another image replaces it (`dataclasses.replace`)."""
        uuid = new_uuid()
        name = f"{self.settings.opts.instance_prefix}{tag}-{uuid[:8]}"
        instance = Instance(uuid=uuid, name=name, flavor=self.settings.flavor(),
                            image=self.settings.image(), host=self.settings.conf.host)
        self.created[uuid] = instance
        return instance

    def spawn(self, tag: str, **kwargs: Any) -> Instance:
        """Spawn a new instance (`new`) with the suite's image; `kwargs` go to spawn."""
        instance = self.new(tag)
        self.driver.spawn(instance=instance, **kwargs)
        return instance

    def state(self, instance: Instance) -> PowerState:
        return self.driver.get_info(instance=instance).state

    def ensure_running(self, instance: Instance) -> None:
        """Undo whatever an earlier test left: the instance is RUNNING afterwards."""
        state = self.state(instance)
        if state is PowerState.PAUSED:
            self.driver.unpause(instance=instance)
        elif state is PowerState.SUSPENDED:
            self.driver.resume(instance=instance)
        elif state is not PowerState.RUNNING:
            self.driver.power_on(instance=instance)
        state = self.state(instance)
        assert state is PowerState.RUNNING, f"could not bring {instance.name} back to RUNNING"

    def destroy_all(self) -> list[str]:
        """Destroy every instance the suite created; return the uuids still listed after."""
        for instance in self.created.values():
            try:
                self.driver.destroy(instance=instance)
            except (VirtError, AssertionError) as exc:
                LOG.warning("conformance cleanup: destroy of %s failed: %s", instance.name, exc)
        try:
            listed = set(self.driver.list_instance_uuids())
        except (VirtError, AssertionError):
            return []
        return sorted(listed & set(self.created))


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy or `timeout` seconds pass.

    Returns the predicate's last value, so a caller can both assert on it and use it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def is_subsequence(wanted: Sequence[Any], seen: Sequence[Any]) -> bool:
    """Whether `wanted` occurs in `seen` in order, other items allowed in between."""
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


@pytest.fixture(scope="session")
def suite(pytestconfig: pytest.Config) -> SuiteSettings:
    """The run's settings (the driver's config file plus its [conformance] group)."""
    run = pytestconfig.pluginmanager.get_plugin("virtkit-conformance-run")
    return run.settings  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def raw_driver(pytestconfig: pytest.Config) -> Iterator[ComputeDriver]:
    """The driver under test, initialised for the configured host, without time bounds:
    the run's one instance (made at the first test that needs it, the capability gating
    included), cleaned up at the end."""
    run = pytestconfig.pluginmanager.get_plugin("virtkit-conformance-run")
    yield run.driver()  # type: ignore[union-attr]
    run.release_driver()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def driver(raw_driver: ComputeDriver, suite: SuiteSettings) -> BoundedDriver:
    """The driver under test; every call is bounded by [conformance] operation_timeout."""
    return BoundedDriver(raw_driver, suite.opts.operation_timeout)


@pytest.fixture(scope="session")
def guests(driver: BoundedDriver, suite: SuiteSettings, observer: Observer,
           pytestconfig: pytest.Config) -> Iterator[Guests]:
    """The suite's instances. What is left of them after the run (listed by the driver, or
    seen on the engine by the observer) fails the run."""
    registry = Guests(driver, suite)
    yield registry
    left = [f"{uuid} still listed by the driver" for uuid in registry.destroy_all()]
    for instance in registry.created.values():
        try:
            left += observer.leftovers(instance)
        except NotObserved:
            break  # no observer of leftovers: the driver's listing is all there is
    if left:
        LOG.error("conformance cleanup: left behind: %s", "; ".join(left))
        run = pytestconfig.pluginmanager.get_plugin("virtkit-conformance-run")
        run.leftovers.extend(left)  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def shared_instance(guests: Guests) -> Instance:
    """A running instance for read-only tests: do not change its state."""
    return guests.spawn("shared")


@pytest.fixture(scope="session")
def _workbench(guests: Guests) -> list[Instance]:
    return [guests.spawn("bench")]


@pytest.fixture
def workbench(_workbench: list[Instance], guests: Guests) -> Iterator[Instance]:
    """A shared instance that tests may change; it is RUNNING when a test gets it.

    A test after which it cannot be brought back to RUNNING fails (at its teardown: the
    test that broke it is the one that fails); it is then replaced, so one failure does not
    cascade into every later test.
    """
    yield _workbench[0]
    try:
        guests.ensure_running(_workbench[0])
    except (VirtError, AssertionError) as exc:
        try:
            guests.driver.destroy(instance=_workbench[0])
            _workbench[0] = guests.spawn("bench")
        except (VirtError, AssertionError) as again:
            pytest.fail(f"this test left the workbench instance unusable ({exc}), and it "
                        f"cannot be replaced: {again}")
        pytest.fail(f"this test left the workbench instance unusable: {exc}")
