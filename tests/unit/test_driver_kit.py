"""The driver kit (virt/driver/): the mechanics every backend shares."""

from __future__ import annotations

import threading
import time

import pytest
from oslo_config import cfg

from virt.driver import power, rollback, spawn_image, transitions
from virt.driver.errors import EngineErrors, EngineFault, FaultKind
from virt.driver.options import call_timeout, reboot_timeout
from virt.errors import (
    AccessDenied,
    HypervisorUnavailable,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    UnsupportedOperation,
    VirtError,
)
from virt.events import LifecycleEvent, Transition
from virt.model import Flavor, ImageRef, Instance, PowerState, new_uuid

# -- power -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "soon", None])
def test_check_timeout_refuses_what_is_not_a_duration(value):
    with pytest.raises(InvalidRequest, match="timeout"):
        power.check_timeout(value)


def test_check_timeout_accepts_zero_and_numbers():
    assert power.check_timeout(0) == 0.0
    assert power.check_timeout("2.5") == 2.5


class Guest:
    """A guest that stops after `obeys_after` soft requests (None: never)."""

    def __init__(self, *, on: bool = True, obeys_after: int | None = 1) -> None:
        self.on = on
        self.obeys_after = obeys_after
        self.requests = 0
        self.forced = 0

    def request_stop(self) -> None:
        self.requests += 1
        if self.obeys_after is not None and self.requests >= self.obeys_after:
            self.on = False

    def wait_off(self, seconds: float) -> bool:
        if self.on:
            time.sleep(seconds)
        return not self.on

    def force_off(self) -> bool:
        was_on, self.on = self.on, False
        self.forced += was_on
        return was_on

    def power_off(self, timeout: float, retry_interval: float = 0.05):
        return power.graceful_power_off(
            timeout=timeout, retry_interval=retry_interval, is_off=lambda: not self.on,
            request_stop=self.request_stop, wait_off=self.wait_off, force_off=self.force_off)


def test_graceful_power_off_clean_when_the_guest_obeys():
    guest = Guest(obeys_after=2)
    result = guest.power_off(timeout=5)
    assert (result.clean, result.forced, result.already_off) == (True, False, False)
    assert guest.requests == 2 and guest.forced == 0


def test_graceful_power_off_forces_after_the_timeout_and_says_so():
    guest = Guest(obeys_after=None)
    result = guest.power_off(timeout=0.3, retry_interval=0.1)
    assert result.forced and not result.clean
    assert guest.requests >= 2 and guest.forced == 1
    assert 0.25 <= result.duration_s < 2


def test_graceful_power_off_zero_timeout_forces_at_once():
    guest = Guest()
    result = guest.power_off(timeout=0)
    assert result.forced and guest.requests == 0


def test_graceful_power_off_of_a_stopped_guest_is_already_off():
    guest = Guest(on=False)
    result = guest.power_off(timeout=5)
    assert result.already_off and result.clean and guest.requests == 0


def test_graceful_power_off_stopped_by_itself_before_the_force_is_clean():
    guest = Guest(obeys_after=None)
    guest.force_off = lambda: False  # type: ignore[method-assign]  # gone by itself meanwhile
    result = guest.power_off(timeout=0.1)
    assert result.clean and not result.forced


def test_graceful_power_off_refuses_negative_values():
    with pytest.raises(InvalidRequest):
        Guest().power_off(timeout=-1)
    with pytest.raises(InvalidRequest):
        Guest().power_off(timeout=1, retry_interval=-1)


def test_reboot_grace_is_the_shorter_bound():
    assert power.reboot_grace(60, 10) == 10
    assert power.reboot_grace(3, 10) == 3


@pytest.mark.parametrize(("guard", "noop", "allowed", "refused"), [
    (power.should_power_on, PowerState.RUNNING, PowerState.SHUTDOWN, PowerState.PAUSED),
    (power.should_pause, PowerState.PAUSED, PowerState.RUNNING, PowerState.SHUTDOWN),
    (power.should_unpause, PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN),
    (power.should_suspend, PowerState.SUSPENDED, PowerState.RUNNING, PowerState.SHUTDOWN),
    (power.should_resume, PowerState.RUNNING, PowerState.SUSPENDED, PowerState.SHUTDOWN),
])
def test_state_guards(guard, noop, allowed, refused):
    assert guard(noop, "vm1") is False
    assert guard(allowed, "vm1") is True
    with pytest.raises(InvalidState, match="vm1"):
        guard(refused, "vm1")


def test_require_running_names_the_state_and_the_operation():
    with pytest.raises(InvalidState, match="cannot soft reboot instance vm1: it is shutdown"):
        power.require_running(PowerState.SHUTDOWN, "vm1", "soft reboot")


# -- rollback --------------------------------------------------------------------------------


def test_rollback_runs_undos_newest_first_and_keeps_the_error():
    done: list[str] = []
    with pytest.raises(KeyError):
        with rollback.SpawnRollback("vm1") as stack:
            stack.push("disk", lambda: done.append("disk"))
            stack.push("domain", lambda: done.append("domain"))
            raise KeyError("spawn failed")
    assert done == ["domain", "disk"]


def test_rollback_on_interrupt_too():
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with rollback.SpawnRollback("vm1") as stack:
            stack.push("disk", lambda: done.append("disk"))
            raise KeyboardInterrupt
    assert done == ["disk"]


def test_rollback_goes_on_past_a_failed_undo_and_says_what_is_left(caplog):
    done: list[str] = []

    def broken() -> None:
        raise VirtError("disk busy")

    with pytest.raises(RuntimeError) as raised:
        with rollback.SpawnRollback("vm1") as stack:
            stack.push("disk", lambda: done.append("disk"))
            stack.push("volume", broken)
            raise RuntimeError("spawn failed")
    assert done == ["disk"]
    assert stack.left_behind == ["volume: disk busy"]
    assert any("volume: disk busy" in note for note in raised.value.__notes__)
    assert "remove it by hand" in caplog.text


def test_a_successful_spawn_keeps_everything():
    done: list[str] = []
    with rollback.SpawnRollback("vm1") as stack:
        stack.push("disk", lambda: done.append("disk"))
    assert done == []


# -- the spawn image -------------------------------------------------------------------------


def test_spawn_image_is_the_instances_image():
    image = ImageRef("cirros", disk_format="qcow2")
    instance = Instance(uuid=new_uuid(), name="vm1", flavor=Flavor("t", 1, 64), image=image)
    assert spawn_image(instance) is image


def test_spawn_image_refuses_an_instance_without_one_naming_it():
    instance = Instance(uuid=new_uuid(), name="vm1", flavor=Flavor("t", 1, 64))
    with pytest.raises(InvalidRequest, match=f"instance {instance.uuid} has no image") as err:
        spawn_image(instance)
    assert err.value.hint and "image" in err.value.hint


# -- transitions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "expected"), [
    (None, PowerState.RUNNING, Transition.STARTED),
    (PowerState.SHUTDOWN, PowerState.RUNNING, Transition.STARTED),
    (PowerState.PAUSED, PowerState.RUNNING, Transition.RESUMED),
    (PowerState.SUSPENDED, PowerState.RUNNING, Transition.RESUMED),
    (PowerState.RUNNING, PowerState.PAUSED, Transition.PAUSED),
    (PowerState.RUNNING, PowerState.SHUTDOWN, Transition.STOPPED),
    (PowerState.PAUSED, None, Transition.STOPPED),
    (PowerState.RUNNING, PowerState.CRASHED, Transition.CRASHED),
    (PowerState.RUNNING, PowerState.SUSPENDED, Transition.SUSPENDED),
    (PowerState.RUNNING, PowerState.RUNNING, None),
    (PowerState.SHUTDOWN, None, None),
    (PowerState.RUNNING, PowerState.UNKNOWN, None),
    (PowerState.UNKNOWN, PowerState.RUNNING, None),
])
def test_transition(old, new, expected):
    assert transitions.transition(old, new) is expected


def test_transition_and_its_inverse_agree():
    for change, state in transitions.POWER_STATE_AFTER.items():
        if change is Transition.STARTED:
            assert transitions.transition(PowerState.SHUTDOWN, state) is change
        elif change is Transition.RESUMED:
            assert transitions.transition(PowerState.PAUSED, state) is change
        else:
            assert transitions.transition(PowerState.RUNNING, state) is change


def test_diff_of_two_listings():
    old = {"a": PowerState.RUNNING, "b": PowerState.PAUSED, "c": PowerState.SHUTDOWN}
    new = {"a": PowerState.SHUTDOWN, "b": PowerState.RUNNING, "d": PowerState.RUNNING}
    assert transitions.diff(old, new) == [
        ("a", Transition.STOPPED), ("b", Transition.RESUMED), ("d", Transition.STARTED)]


def test_tracker_resync_emits_what_changed_while_away():
    tracker = transitions.PowerStateTracker()
    assert tracker.resync({"a": PowerState.RUNNING}, emit=False) == []
    assert tracker.observe("b", PowerState.RUNNING) is Transition.STARTED
    assert tracker.observe("b", PowerState.RUNNING) is None
    events = tracker.resync({"a": PowerState.SHUTDOWN, "b": PowerState.RUNNING})
    assert [(e.instance_uuid, e.transition) for e in events] == [("a", Transition.STOPPED)]
    assert tracker.observe("a", None) is None  # shut down, then removed: no news
    assert tracker.known() == {"b": PowerState.RUNNING}


class Collect:
    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self.arrived = threading.Event()

    def __call__(self, event: LifecycleEvent) -> None:
        self.events.append(event)
        self.arrived.set()


def test_dispatcher_debounces_a_reboot_and_delivers_a_real_stop():
    got = Collect()
    dispatcher = transitions.LifecycleDispatcher(got, stopped_delay=0.3, batch_window=0.01)
    try:
        dispatcher.push(LifecycleEvent("a", Transition.STOPPED))
        dispatcher.push(LifecycleEvent("a", Transition.STARTED))  # a reboot
        dispatcher.push(LifecycleEvent("b", Transition.STOPPED))  # a shutdown
        deadline = time.monotonic() + 3
        while len(got.events) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.4)
    finally:
        dispatcher.stop()
    assert [(e.instance_uuid, e.transition) for e in got.events] == [
        ("a", Transition.STARTED), ("b", Transition.STOPPED)]


def test_dispatcher_translates_raw_events_and_survives_a_bad_one():
    got = Collect()

    def translate(raw: tuple[str, str]) -> LifecycleEvent | None:
        uuid, what = raw
        if what == "bad":
            raise ValueError("garbled")
        return None if what == "defined" else LifecycleEvent(uuid, Transition(what))

    dispatcher = transitions.LifecycleDispatcher(got, stopped_delay=0, translate=translate,
                                                 batch_window=0.01)
    try:
        for raw in [("a", "bad"), ("a", "defined"), ("a", "started")]:
            dispatcher.push(raw)
        assert got.arrived.wait(3)
    finally:
        dispatcher.stop()
    assert [(e.instance_uuid, e.transition) for e in got.events] == [("a", Transition.STARTED)]


# -- errors ----------------------------------------------------------------------------------


class EngineFailure(Exception):
    def __init__(self, kind: FaultKind | None) -> None:
        super().__init__(kind.value if kind else "not the engine's")
        self.kind = kind


def _classify(exc: BaseException) -> EngineFault | None:
    if isinstance(exc, EngineFailure) and exc.kind is not None:
        return EngineFault(exc.kind, f"said {exc.kind.value}", hint="do this")
    return None


ENGINE = EngineErrors("engine", _classify)


@pytest.mark.parametrize(("kind", "error_class"), [
    (FaultKind.NOT_FOUND, InstanceNotFound),
    (FaultKind.INVALID_STATE, InvalidState),
    (FaultKind.INVALID_REQUEST, InvalidRequest),
    (FaultKind.UNSUPPORTED, UnsupportedOperation),
    (FaultKind.ACCESS_DENIED, AccessDenied),
    (FaultKind.UNAVAILABLE, HypervisorUnavailable),
    (FaultKind.FAILED, VirtError),
])
def test_engine_errors_by_kind(kind, error_class):
    with pytest.raises(error_class) as raised:
        with ENGINE.translate("start it", instance="vm1"):
            raise EngineFailure(kind)
    assert type(raised.value) is error_class
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_permission_problem_is_not_a_lost_connection():
    error = ENGINE.error(EngineFailure(FaultKind.ACCESS_DENIED), "read the image")
    assert isinstance(error, AccessDenied) and not isinstance(error, HypervisorUnavailable)
    assert error.message == "engine could not read the image: said access denied"
    assert error.hint == "do this"


def test_foreign_exceptions_and_virtkit_errors_pass_unchanged():
    with pytest.raises(EngineFailure):
        with ENGINE.translate("start it"):
            raise EngineFailure(None)
    with pytest.raises(InvalidRequest, match="mine"):
        with ENGINE.translate("start it"):
            raise InvalidRequest("mine")


# -- options ---------------------------------------------------------------------------------


def test_deprecated_option_names_keep_working(tmp_path, caplog):
    path = tmp_path / "virtkit.conf"
    path.write_text("[engine]\nconnect_timeout = 7\nstop_timeout = 3\n")
    conf = cfg.ConfigOpts()
    conf.register_opts([call_timeout(deprecated_name="connect_timeout"),
                        reboot_timeout(deprecated_name="stop_timeout")], group="engine")
    conf(args=[], default_config_files=[str(path)])
    assert conf.engine.call_timeout == 7
    assert conf.engine.call_timeout == 7
    assert conf.engine.reboot_timeout == 3
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len([w for w in warnings if "connect_timeout" in w]) == 1, warnings  # once
    assert any("call_timeout" in w for w in warnings)
    assert any("stop_timeout" in w and "reboot_timeout" in w for w in warnings)


# -- moved from the docker driver's tests (its states.diff became the kit's) ------------------


def test_diff_emits_what_changed():
    old = {"a": PowerState.RUNNING, "b": PowerState.PAUSED, "c": PowerState.RUNNING,
           "d": PowerState.SHUTDOWN}
    new = {"a": PowerState.SHUTDOWN, "b": PowerState.RUNNING, "d": PowerState.SHUTDOWN,
           "e": PowerState.RUNNING, "f": PowerState.CRASHED}
    assert transitions.diff(old, new) == [
        ("a", Transition.STOPPED),
        ("b", Transition.RESUMED),
        ("c", Transition.STOPPED),
        ("e", Transition.STARTED),
        ("f", Transition.CRASHED),
    ]


# -- capabilities per connection -------------------------------------------------------------


def _capable_driver(conf_caps: frozenset):
    from virt.driver import Capability, ComputeDriver

    class Capable(ComputeDriver):
        name = "capable"
        capabilities = conf_caps

        def init_host(self, *, host):
            self.narrow_capabilities(
                {Capability.PAUSE, Capability.RESCUE} if host == "narrow" else (),
                reason="this engine cannot")

        def get_available_resource(self):
            raise NotImplementedError

        def list_instances(self):
            return []

        def list_instance_uuids(self):
            return []

        def get_info(self, *, instance):
            raise InstanceNotFound(instance.uuid)

        def spawn(self, *, instance, block_devices=(), vifs=(), admin_password=None,
                  power_on=True):
            raise NotImplementedError

        def destroy(self, *, instance, block_devices=(), destroy_disks=True):
            return None

        def reboot(self, *, instance, hard=False, timeout=60):
            raise NotImplementedError

        def power_off(self, *, instance, timeout=60, retry_interval=10):
            raise NotImplementedError

        def power_on(self, *, instance, block_devices=()):
            raise NotImplementedError

    return Capable(cfg.ConfigOpts())


def test_connection_capabilities_are_the_class_ones_until_narrowed():
    from virt.driver import Capability

    declared = frozenset({Capability.PAUSE, Capability.SNAPSHOT})
    driver = _capable_driver(declared)
    assert driver.connection_capabilities == declared
    assert driver.supports(Capability.PAUSE) and not driver.supports(Capability.RESCUE)
    driver.init_host(host="wide")
    assert driver.connection_capabilities == declared


def test_init_host_narrows_what_this_instance_supports_not_the_class(caplog):
    from virt.driver import Capability

    declared = frozenset({Capability.PAUSE, Capability.SNAPSHOT})
    driver = _capable_driver(declared)
    with caplog.at_level("INFO", logger="virt.driver.base"):
        driver.init_host(host="narrow")
    # Only what the class declares can be narrowed away (RESCUE was never claimed).
    assert driver.connection_capabilities == {Capability.SNAPSHOT}
    assert not driver.supports(Capability.PAUSE) and driver.supports(Capability.SNAPSHOT)
    assert type(driver).capabilities == declared  # the most the driver can ever do
    assert "does not support pause: this engine cannot" in caplog.text
    assert "rescue" not in caplog.text
    other = type(driver)(cfg.ConfigOpts())
    assert other.supports(Capability.PAUSE)  # another instance is not narrowed
    driver.init_host(host="wide")  # a repeated init_host starts from the class again
    assert driver.connection_capabilities == declared
