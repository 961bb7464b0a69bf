"""Contracts every driver keeps, whatever it declares (DESIGN.md, "The driver interface")."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from virt.conformance.fixtures import is_subsequence, wait_for
from virt.driver import Capability, load_driver
from virt.errors import (
    HypervisorUnavailable,
    InstanceExists,
    InstanceNotFound,
    InvalidRequest,
    VirtError,
)
from virt.events import Transition
from virt.model import HostResources, InstanceInfo, PowerOffResult, PowerState

ops = pytest.mark.virtkit_operations

#: How long the suite waits for a restart that should not happen (a guest that restarts
#: shows its new boot only after a while).
SETTLE_S = 1.0


@ops("init_host")
def test_init_host_is_repeatable(driver, suite, shared_instance, effects):
    boot = effects.see("the guest's boot", lambda o: o.boot_id(shared_instance))
    driver.init_host(host=suite.conf.host)
    assert shared_instance.uuid in driver.list_instance_uuids()
    assert driver.get_info(instance=shared_instance).state is PowerState.RUNNING
    effects.expect("a second init_host leaves the guests running as they were",
                   lambda o: o.power_state(shared_instance) is PowerState.RUNNING
                   and o.boot_id(shared_instance) == boot)


@ops("init_host", "cleanup_host")
def test_cleanup_host_on_a_second_driver(driver, suite, shared_instance, effects):
    from virt.conformance.bounded import BoundedDriver

    boot = effects.see("the guest's boot", lambda o: o.boot_id(shared_instance))
    other = BoundedDriver(load_driver(suite.conf.compute_driver, suite.conf),
                          suite.opts.operation_timeout)
    other.init_host(host=suite.conf.host)
    assert shared_instance.uuid in other.list_instance_uuids()
    other.cleanup_host(host=suite.conf.host)
    # cleanup_host lets go of the driver's resources, never of the host's guests
    assert driver.get_info(instance=shared_instance).state is PowerState.RUNNING
    effects.expect("cleanup_host leaves the guests running",
                   lambda o: o.power_state(shared_instance) is PowerState.RUNNING
                   and o.boot_id(shared_instance) == boot)


@ops("get_available_resource")
def test_available_resource_keys_and_types(driver):
    res = driver.get_available_resource()
    assert isinstance(res, HostResources), f"got {type(res).__name__}, not HostResources"
    data = res.as_dict()
    assert set(HostResources.REQUIRED_KEYS) <= set(data)
    for key in ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
                "local_gb_used", "hypervisor_version"):
        value = data[key]
        assert isinstance(value, int) and not isinstance(value, bool), f"{key}={value!r} not int"
        assert value >= 0, f"{key} is negative: {value}"
    assert data["vcpus"] >= 1 and data["memory_mb"] >= 1
    assert isinstance(data["hypervisor_type"], str) and data["hypervisor_type"]
    assert isinstance(data["hypervisor_hostname"], str) and data["hypervisor_hostname"]
    assert isinstance(json.loads(data["cpu_info"]), dict), "cpu_info must be a JSON object"
    assert data["disk_available_least"] is None or isinstance(data["disk_available_least"], int)
    for entry in data["supported_instances"]:
        assert len(entry) == 3 and all(isinstance(x, str) for x in entry), entry


@ops("list_instances", "list_instance_uuids", "instance_exists", "spawn")
def test_listings_agree(driver, shared_instance):
    names, uuids = driver.list_instances(), driver.list_instance_uuids()
    assert all(isinstance(n, str) for n in names) and all(isinstance(u, str) for u in uuids)
    assert len(uuids) == len(set(uuids)), f"duplicate uuids listed: {uuids}"
    assert len(names) == len(uuids), f"{len(names)} names but {len(uuids)} uuids"
    assert shared_instance.uuid in uuids
    assert shared_instance.name in names
    assert driver.instance_exists(instance=shared_instance) is True


@ops("get_info")
def test_get_info_of_a_running_instance(driver, shared_instance):
    info = driver.get_info(instance=shared_instance)
    assert isinstance(info, InstanceInfo)
    assert info.state is PowerState.RUNNING


@ops("get_info", "instance_exists")
def test_get_info_of_unknown_instance_raises_not_found(driver, guests):
    ghost = guests.new("ghost")
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=ghost)
    assert driver.instance_exists(instance=ghost) is False


@ops("power_off", "power_on", "reboot")
def test_power_operations_on_unknown_instance_raise_not_found(driver, guests):
    ghost = guests.new("ghost")
    for call in (driver.power_off, driver.power_on, driver.reboot):
        with pytest.raises(InstanceNotFound):
            call(instance=ghost)


@ops("destroy")
def test_destroy_of_unknown_instance_is_a_noop(driver, guests, shared_instance, effects):
    before = sorted(driver.list_instance_uuids())
    ghost = guests.new("ghost")
    driver.destroy(instance=ghost)
    driver.destroy(instance=ghost, destroy_disks=False)
    assert sorted(driver.list_instance_uuids()) == before
    assert driver.instance_exists(instance=ghost) is False
    effects.expect("destroy of an unknown instance makes nothing",
                   lambda o: not o.exists(ghost) and not o.leftovers(ghost))
    effects.expect("destroy of an unknown instance touches no other guest",
                   lambda o: o.power_state(shared_instance) is PowerState.RUNNING)


@ops("spawn", "power_on", "destroy", "list_instance_uuids")
def test_spawn_powered_off_start_and_destroy_twice(driver, guests, effects):
    instance = guests.spawn("off", power_on=False)
    assert driver.get_info(instance=instance).state is PowerState.SHUTDOWN
    effects.expect("spawn(power_on=False) defines the guest, stopped",
                   lambda o: o.exists(instance) and o.power_state(instance) is PowerState.SHUTDOWN,
                   ops=("spawn",))
    driver.power_on(instance=instance)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    effects.expect("power_on starts the guest",
                   lambda o: o.power_state(instance) is PowerState.RUNNING, ops=("power_on",))
    driver.destroy(instance=instance)
    effects.expect("destroy removes everything of the instance from the engine",
                   lambda o: not o.exists(instance) and not o.leftovers(instance),
                   ops=("destroy",))
    driver.destroy(instance=instance)
    assert instance.uuid not in driver.list_instance_uuids()
    assert instance.name not in driver.list_instances()
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=instance)


@ops("spawn")
def test_spawn_of_an_existing_uuid_raises_instance_exists(driver, shared_instance):
    with pytest.raises(InstanceExists):
        driver.spawn(instance=shared_instance)
    assert driver.list_instance_uuids().count(shared_instance.uuid) == 1
    assert driver.get_info(instance=shared_instance).state is PowerState.RUNNING


@ops("spawn")
def test_failed_spawn_leaves_nothing_behind(driver, suite, guests, effects):
    instance = dataclasses.replace(guests.new("doomed"), image=suite.missing_image())
    with pytest.raises(VirtError) as failure:
        driver.spawn(instance=instance)
    assert not isinstance(failure.value, InstanceExists)
    _assert_nothing_left(driver, instance, effects)


@ops("spawn")
@pytest.mark.virtkit_kind("check")
def test_spawn_that_fails_late_leaves_nothing_behind(driver, suite, guests, effects):
    """After the engine made the disk, the boot fails: the rollback removes all of it."""
    image = suite.late_failure_image()
    if image is None:
        pytest.skip("no [conformance] late_failure_image_properties configured")
    instance = dataclasses.replace(guests.new("late"), image=image)
    with pytest.raises(VirtError):
        driver.spawn(instance=instance)
    _assert_nothing_left(driver, instance, effects)


@ops("spawn")
def test_spawn_of_an_instance_without_an_image_is_refused(driver, guests, effects):
    instance = dataclasses.replace(guests.new("imageless"), image=None)
    with pytest.raises(InvalidRequest) as refusal:
        driver.spawn(instance=instance)
    assert instance.uuid in str(refusal.value), f"the refusal does not name it: {refusal.value}"
    _assert_nothing_left(driver, instance, effects)


def _assert_nothing_left(driver, instance, effects) -> None:
    """The engine has no trace of `instance`: by every listing the interface has, and by
    what the observer sees (engine objects, files, secrets, sessions)."""
    effects.expect("a failed spawn leaves nothing on the engine",
                   lambda o: not o.exists(instance) and not o.leftovers(instance))
    assert instance.uuid not in driver.list_instance_uuids()
    assert instance.name not in driver.list_instances()
    assert driver.instance_exists(instance=instance) is False
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=instance)


@ops("power_on")
def test_power_on_of_a_running_instance_is_a_noop(driver, workbench, effects):
    boot = effects.see("the guest's boot", lambda o: o.boot_id(workbench))
    driver.power_on(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    effects.stays("power_on of a running guest does not restart it",
                  lambda o: o.boot_id(workbench) == boot, seconds=SETTLE_S)


@ops("power_off", "power_on")
def test_power_off_returns_result_and_shuts_down(driver, suite, workbench, effects):
    result = driver.power_off(instance=workbench, timeout=suite.opts.power_off_timeout)
    assert isinstance(result, PowerOffResult), f"got {type(result).__name__}"
    assert result.clean or result.forced
    assert result.duration_s >= 0
    assert driver.get_info(instance=workbench).state is PowerState.SHUTDOWN
    effects.expect("power_off stops the guest",
                   lambda o: o.power_state(workbench) is PowerState.SHUTDOWN, ops=("power_off",))
    again = driver.power_off(instance=workbench, timeout=suite.opts.power_off_timeout)
    assert isinstance(again, PowerOffResult), "power_off of a stopped instance must succeed"
    assert driver.get_info(instance=workbench).state is PowerState.SHUTDOWN
    driver.power_on(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING


@ops("reboot")
def test_soft_and_hard_reboot(driver, suite, workbench, effects):
    for hard in (False, True):
        boot = effects.see("the guest's boot", lambda o: o.boot_id(workbench))
        driver.reboot(instance=workbench, hard=hard, timeout=suite.opts.reboot_timeout)
        assert driver.get_info(instance=workbench).state is PowerState.RUNNING
        effects.expect(f"a {'hard' if hard else 'soft'} reboot restarts the guest",
                       lambda o, before=boot: o.boot_id(workbench) != before,
                       timeout=suite.opts.boot_timeout)


@ops("register_event_listener", "unregister_event_listener")
def test_listener_registry(driver):
    with pytest.raises(TypeError):
        driver.register_event_listener("not callable")
    seen: list[object] = []
    driver.register_event_listener(seen.append)
    driver.unregister_event_listener(seen.append)
    driver.unregister_event_listener(seen.append)  # unknown listener: no error


# What a guest is after each transition; RESUMED after STARTED re-asserts "running"
# (libvirt may report both for one start). Pause, suspend and crash have no place in
# spawn -> power_off -> power_on -> destroy.
_LIFE = {Transition.STARTED: "running", Transition.RESUMED: "running",
         Transition.STOPPED: "off"}
_SCENARIO = ("running", "off", "running", "off")
#: How long events may still arrive after destroy returned (asynchronous engines).
EVENT_SETTLE_S = 0.5


def _order_problem(events: list) -> str | None:
    """Why these events of one instance cannot come from spawn, power_off, power_on and
    destroy, in that order; None if they can. Lost events are allowed, not invented ones."""
    seen = [e.transition.value for e in events]
    if [e.seq for e in events] != sorted(e.seq for e in events):
        return f"events delivered out of their seq order: {seen}"
    strange = [t for t in seen if Transition(t) not in _LIFE]
    if strange:
        return f"{', '.join(strange)} without a pause, suspend or crash: {seen}"
    lives: list[str] = []
    for event in events:
        life = _LIFE[event.transition]
        if not lives or lives[-1] != life:
            lives.append(life)
    if lives and lives[0] != "running":
        return f"{seen[0]} before the instance's first started event: {seen}"
    if not is_subsequence(lives, _SCENARIO):
        return f"events after the final stopped one, or in an impossible order: {seen}"
    return None


@ops("register_event_listener", "unregister_event_listener", "spawn", "power_off",
     "power_on", "destroy")
def test_events_that_arrive_are_in_a_valid_order(driver, suite, guests):
    """Any driver may emit events; whatever it emits must tell the instance's true story."""
    instance = guests.new("order")
    mine: list = []

    def listener(event) -> None:
        if event.instance_uuid == instance.uuid:
            mine.append(event)

    driver.register_event_listener(listener)
    try:
        driver.spawn(instance=instance)
        driver.power_off(instance=instance, timeout=suite.opts.power_off_timeout)
        driver.power_on(instance=instance)
        driver.destroy(instance=instance)
        if driver.supports(Capability.LIFECYCLE_EVENTS):  # its destroy's event may lag
            wait_for(lambda: mine and mine[-1].transition is Transition.STOPPED,
                     suite.opts.event_timeout)
        time.sleep(EVENT_SETTLE_S)  # room for an event that should never come
    finally:
        driver.unregister_event_listener(listener)
        driver.destroy(instance=instance)
    problem = _order_problem(list(mine))
    assert problem is None, problem


@ops("list_instances", "list_instance_uuids", "get_info", "spawn", "destroy", "power_off",
     "power_on", "reboot")
def test_unreachable_engine_raises_hypervisor_unavailable(driver, suite, guests, shared_instance):
    from virt.conformance.bounded import BoundedDriver
    from virt.conformance.settings import unreachable_conf

    conf = unreachable_conf(suite)
    if conf is None:
        pytest.skip("no [conformance] unreachable_overrides configured")
    cut_off = BoundedDriver(load_driver(conf.compute_driver, conf), suite.opts.operation_timeout)
    try:
        cut_off.init_host(host=conf.host)
    except HypervisorUnavailable:
        pass  # refusing to start is honest; every call below must still say why
    fresh = guests.new("unreachable")  # destroyed at the end if a spawn got through anyway
    calls = {
        # never "no instances"
        "list_instances": cut_off.list_instances,
        "list_instance_uuids": cut_off.list_instance_uuids,
        # never "not found" or a state: UNKNOWN is a guest the engine cannot tell, not this
        "get_info": lambda: cut_off.get_info(instance=shared_instance),
        "spawn": lambda: cut_off.spawn(instance=fresh),
        # never "already gone" (a no-op) or "already off"
        "destroy": lambda: cut_off.destroy(instance=shared_instance),
        "power_off": lambda: cut_off.power_off(instance=shared_instance,
                                               timeout=suite.opts.power_off_timeout),
        "power_on": lambda: cut_off.power_on(instance=shared_instance),
        "reboot": lambda: cut_off.reboot(instance=shared_instance, hard=True),
    }
    wrong: list[str] = []
    for name, call in calls.items():
        try:
            outcome = call()
        except HypervisorUnavailable:
            continue
        except Exception as exc:  # reported below, with the others
            wrong.append(f"{name} raised {type(exc).__name__}: {exc}")
        else:
            shown = getattr(outcome, "state", outcome)
            wrong.append(f"{name} returned {shown!r}")
    try:
        cut_off.cleanup_host(host=conf.host)
    except HypervisorUnavailable:
        pass
    assert not wrong, ("on an unreachable engine every call must raise HypervisorUnavailable: "
                       + "; ".join(wrong))
    # the reachable engine's guest is untouched by what the cut-off driver was asked
    assert driver.get_info(instance=shared_instance).state is PowerState.RUNNING
