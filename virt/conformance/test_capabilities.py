"""Per-capability conformance: declared → it must work; undeclared → UnsupportedOperation.

A test of an undeclared capability is SKIPPED with the reason (the plugin gates it before
any fixture runs); a declared capability whose operation raises UnsupportedOperation or
NotImplementedError FAILS.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest

from virt.conformance.fixtures import is_subsequence, wait_for
from virt.driver import OPERATIONS, Capability
from virt.errors import (
    InstanceNotFound,
    InstanceNotRunning,
    UnsupportedOperation,
    VolumeError,
    VolumeNotFound,
)
from virt.events import Transition
from virt.model import (
    BlockDevice,
    ImageRef,
    PowerState,
    VolumeConnection,
    VolumeConnector,
)

ops = pytest.mark.virtkit_operations
cap = pytest.mark.virtkit_capability

GATED = {op: capability for op, capability in OPERATIONS.items() if capability is not None}
PLACEHOLDER_VOLUME = VolumeConnection(
    "iscsi", {"target_portal": "192.0.2.1:3260", "target_iqn": "iqn.2010-10.org.example:none",
              "target_lun": 1}, serial="virtkit-conformance-placeholder")


def _arguments(op: str, instance, suite) -> dict:
    """Plausible arguments for one gated operation."""
    args: dict = {"instance": instance}
    if op == "snapshot":
        args["name"] = f"{suite.opts.instance_prefix}refusal"
    elif op == "rescue":
        args["image"] = suite.image()
    elif op in ("attach_volume", "detach_volume"):
        args["block_device"] = BlockDevice(PLACEHOLDER_VOLUME, suite.opts.volume_mountpoint)
    elif op == "set_admin_password":
        args["password"] = secrets.token_urlsafe(12)
    elif op == "inject_file":
        args.update(path="/etc/virtkit-conformance", contents=b"conformance\n")
    return args


def _refusal_param(op: str, capability: Capability) -> Any:
    marks = [ops(op), cap(capability), pytest.mark.virtkit_kind("unsupported")]
    return pytest.param(op, id=op, marks=marks)


@pytest.mark.parametrize("op", [_refusal_param(op, c) for op, c in GATED.items()])
def test_undeclared_operation_raises_unsupported(driver, suite, workbench, op):
    try:
        getattr(driver, op)(**_arguments(op, workbench, suite))
    except UnsupportedOperation as exc:
        assert exc.operation == op, f"UnsupportedOperation names {exc.operation!r}, not {op!r}"
        return
    except NotImplementedError:
        pytest.fail(f"{op} raised NotImplementedError: raise UnsupportedOperation instead")
    except Exception as exc:
        pytest.fail(f"{op} is not declared but raised {type(exc).__name__}: {exc} "
                    "(an undeclared operation must raise UnsupportedOperation)")
    pytest.fail(f"{op} is not declared, yet it succeeded: declare capability "
                f"'{GATED[op].value}' or raise UnsupportedOperation")


@cap(Capability.PAUSE)
@ops("pause", "unpause")
def test_pause_and_unpause(driver, workbench):
    driver.pause(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.PAUSED
    driver.unpause(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    driver.unpause(instance=workbench)  # running: a no-op by contract
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING


@cap(Capability.SUSPEND)
@ops("suspend", "resume")
def test_suspend_and_resume(driver, workbench):
    driver.suspend(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.SUSPENDED
    driver.resume(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING


@cap(Capability.SNAPSHOT)
@ops("snapshot", "spawn")
def test_snapshot_then_spawn_from_it(driver, suite, guests, workbench):
    # unique: snapshots outlive the run (the interface cannot delete images)
    name = f"{suite.opts.instance_prefix}snap-{secrets.token_hex(4)}"
    image = driver.snapshot(instance=workbench, name=name)
    assert isinstance(image, ImageRef), f"snapshot returned {type(image).__name__}"
    clone = dataclasses.replace(guests.new("clone"), image=image)
    driver.spawn(instance=clone)
    assert driver.get_info(instance=clone).state is PowerState.RUNNING
    driver.destroy(instance=clone)


@cap(Capability.SNAPSHOT)
@ops("snapshot")
def test_snapshot_of_unknown_instance_fails(driver, guests):
    with pytest.raises((InstanceNotRunning, InstanceNotFound)):
        driver.snapshot(instance=guests.new("ghost"), name="never")


@cap(Capability.RESCUE)
@ops("rescue", "unrescue")
def test_rescue_and_unrescue(driver, suite, workbench):
    driver.rescue(instance=workbench, image=suite.image(),
                  rescue_password=secrets.token_urlsafe(12))
    try:
        assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    finally:
        driver.unrescue(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    driver.unrescue(instance=workbench)  # not rescued: no-op


@cap(Capability.VOLUME_ATTACH)
@ops("get_volume_connector")
def test_volume_connector(driver, workbench):
    for connector in (driver.get_volume_connector(),
                      driver.get_volume_connector(instance=workbench)):
        assert isinstance(connector, VolumeConnector)
        data = connector.as_dict()
        assert data["host"] and data["ip"], data
        assert {"host", "ip", "initiator", "multipath"} <= set(data)


def _secrets_of(connection: VolumeConnection) -> list[str]:
    return [str(v) for k, v in connection.data.items() if "password" in k and v]


def _attach_detach(driver, suite, instance, connection, caplog) -> None:
    bdm = BlockDevice(connection, suite.opts.volume_mountpoint)
    caplog.set_level(logging.DEBUG)
    driver.attach_volume(instance=instance, block_device=bdm)
    try:
        with pytest.raises(VolumeError):
            driver.attach_volume(instance=instance, block_device=bdm)
    finally:
        driver.detach_volume(instance=instance, block_device=bdm)
    with pytest.raises(VolumeNotFound):
        driver.detach_volume(instance=instance, block_device=bdm)
    logged = caplog.text
    for secret in _secrets_of(connection):
        assert secret not in logged, "a volume secret reached the log"


@cap(Capability.VOLUME_ATTACH)
@ops("attach_volume", "detach_volume")
def test_volume_attach_and_detach(driver, suite, workbench, caplog):
    connection = suite.volume()
    if connection is None:
        pytest.skip("no [conformance] volume_connection_info configured")
    _attach_detach(driver, suite, workbench, connection, caplog)


@cap(Capability.VOLUME_ISCSI_CHAP)
@ops("attach_volume", "detach_volume")
def test_iscsi_chap_volume(driver, suite, workbench, caplog):
    connection = suite.chap_volume()
    if connection is None:
        pytest.skip("no [conformance] chap_volume_connection_info configured")
    assert str(connection.data.get("auth_method", "")).upper() == "CHAP", (
        "chap_volume_connection_info must have auth_method CHAP")
    _attach_detach(driver, suite, workbench, connection, caplog)
    console = ""
    if driver.supports(Capability.CONSOLE_OUTPUT):
        console = driver.get_console_output(instance=workbench)
    for secret in _secrets_of(connection):
        assert secret not in console, "a CHAP secret reached the console log"


@cap(Capability.CONSOLE_OUTPUT)
@ops("get_console_output")
def test_console_output_is_bounded_text(driver, suite, shared_instance):
    marker = suite.opts.console_marker
    if marker:
        found = wait_for(lambda: marker in driver.get_console_output(instance=shared_instance),
                         suite.opts.boot_timeout, interval=0.5)
        assert found, f"console never showed {marker!r} within {suite.opts.boot_timeout:g}s"
    text = driver.get_console_output(instance=shared_instance)
    assert isinstance(text, str)
    assert len(text.encode("utf-8")) <= 64 * 1024
    small = driver.get_console_output(instance=shared_instance, max_bytes=64)
    assert isinstance(small, str) and len(small.encode("utf-8")) <= 64


@cap(Capability.SET_ADMIN_PASSWORD)
@ops("set_admin_password")
def test_set_admin_password(driver, workbench, caplog):
    password = secrets.token_urlsafe(16)
    caplog.set_level(logging.DEBUG)
    driver.set_admin_password(instance=workbench, password=password)
    assert password not in caplog.text, "the admin password reached the log"


@cap(Capability.INJECT_FILE)
@ops("inject_file")
def test_inject_file(driver, workbench):
    driver.inject_file(instance=workbench, path="/etc/virtkit-conformance",
                       contents=b"injected by the conformance suite\n")
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING


@cap(Capability.INSTANCE_DISK_FILE)
@ops("instance_disk_path", "spawn", "destroy")
def test_instance_disk_file_is_kept_by_destroy_without_disks(driver, guests):
    instance = guests.spawn("disk-file")
    path = Path(driver.instance_disk_path(instance=instance))
    assert path.is_absolute() and path.is_file(), f"no root disk file at {path} after spawn"
    driver.destroy(instance=instance, destroy_disks=False)
    assert path.is_file(), "destroy(destroy_disks=False) removed the root disk"
    driver.destroy(instance=instance)
    assert not path.exists(), "destroy left the root disk behind"


@cap(Capability.LIFECYCLE_EVENTS)
@ops("register_event_listener", "unregister_event_listener", "spawn", "power_off", "power_on")
def test_lifecycle_events_arrive_in_order(driver, suite, guests):
    """A driver that declares events delivers each one (the order of whatever any driver
    delivers is the always-run contract test_events_that_arrive_are_in_a_valid_order)."""
    instance = guests.new("events")
    mine: list = []
    removed: list = []

    def listener(event) -> None:
        if event.instance_uuid == instance.uuid:
            mine.append(event)

    driver.register_event_listener(listener)
    driver.register_event_listener(removed.append)
    driver.unregister_event_listener(removed.append)

    def arrived(*wanted: Transition) -> None:
        ok = wait_for(lambda: is_subsequence(wanted, [e.transition for e in mine]),
                      suite.opts.event_timeout)
        seen = [e.transition.value for e in mine]
        assert ok, (f"expected {', '.join(w.value for w in wanted)} in order within "
                    f"{suite.opts.event_timeout:g}s; got {seen}")

    try:
        # Each step waits for its event, so an engine that debounces STOPPED (a quick
        # restart is not a shutdown) is judged on what it reports, not on a race.
        driver.spawn(instance=instance)
        arrived(Transition.STARTED)
        driver.power_off(instance=instance, timeout=suite.opts.power_off_timeout)
        arrived(Transition.STARTED, Transition.STOPPED)
        driver.power_on(instance=instance)
        arrived(Transition.STARTED, Transition.STOPPED, Transition.STARTED)
        assert [e.seq for e in mine] == sorted(e.seq for e in mine), "events out of order"
    finally:
        driver.unregister_event_listener(listener)
        driver.destroy(instance=instance)
    # it would have seen the three events `listener` got, had it still been registered
    assert not removed, "an unregistered listener still received events"
