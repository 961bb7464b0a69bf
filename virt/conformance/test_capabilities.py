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
    VirtError,
    VolumeError,
    VolumeNotFound,
)
from virt.events import Transition
from virt.model import (
    BlockDevice,
    ImageRef,
    PowerState,
    Vif,
    VolumeConnection,
    VolumeConnector,
    new_uuid,
)
from virt.volume import parse_glusterfs_volume

ops = pytest.mark.virtkit_operations
cap = pytest.mark.virtkit_capability

#: How long the suite watches a paused guest's clock, and waits for a restart that should
#: not happen (a guest that restarts shows its new boot only after a while).
CLOCK_WATCH_S = 0.5
SETTLE_S = 1.0
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
def test_pause_and_unpause(driver, workbench, effects):
    boot = effects.see("the guest's boot", lambda o: o.boot_id(workbench))
    effects.see("the running guest's clock", lambda o: o.clock(workbench), ops=("pause",))
    driver.pause(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.PAUSED
    effects.expect("the guest is paused", lambda o: o.power_state(workbench) is PowerState.PAUSED)
    frozen = effects.see("the guest's clock", lambda o: o.clock(workbench), ops=("pause",))
    if frozen is not None:
        effects.stays("the paused guest's clock stands still",
                      lambda o: o.clock(workbench) == frozen, seconds=CLOCK_WATCH_S,
                      ops=("pause",))
    driver.unpause(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    if frozen is not None:
        effects.expect("the unpaused guest's clock goes on",
                       lambda o: o.clock(workbench) > frozen, timeout=10, ops=("unpause",))
    driver.unpause(instance=workbench)  # running: a no-op by contract
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    effects.expect("pause and unpause keep the guest's boot (no restart)",
                   lambda o: o.boot_id(workbench) == boot)


@cap(Capability.SUSPEND)
@ops("suspend", "resume")
def test_suspend_and_resume(driver, workbench, effects):
    boot = effects.see("the guest's boot", lambda o: o.boot_id(workbench))
    driver.suspend(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.SUSPENDED
    effects.expect("the guest is suspended",
                   lambda o: o.power_state(workbench) is PowerState.SUSPENDED, ops=("suspend",))
    driver.resume(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    effects.expect("the resumed guest runs",
                   lambda o: o.power_state(workbench) is PowerState.RUNNING, ops=("resume",))
    effects.stays("resume keeps the guest's memory (the same boot, no restart)",
                  lambda o: o.boot_id(workbench) == boot, seconds=SETTLE_S)


@cap(Capability.SNAPSHOT)
@ops("snapshot", "spawn")
def test_snapshot_then_spawn_from_it(driver, suite, guests, effects):
    source = guests.spawn("snap-src")
    driver.power_off(instance=source, timeout=suite.opts.power_off_timeout)
    mark = effects.see("a mark written into the root disk", lambda o: o.mark_disk(source))
    driver.power_on(instance=source)
    # unique: snapshots outlive the run (the interface cannot delete images)
    name = f"{suite.opts.instance_prefix}snap-{secrets.token_hex(4)}"
    image = driver.snapshot(instance=source, name=name)
    assert isinstance(image, ImageRef), f"snapshot returned {type(image).__name__}"
    assert image.ref != source.image.ref, "snapshot returned the instance's own image"
    clone = dataclasses.replace(guests.new("clone"), image=image)
    driver.spawn(instance=clone)
    assert driver.get_info(instance=clone).state is PowerState.RUNNING
    if mark is not None:
        effects.expect("the snapshot holds what the instance's disk held",
                       lambda o: o.disk_has_mark(clone, mark))
    driver.destroy(instance=clone)
    driver.destroy(instance=source)


@cap(Capability.SNAPSHOT)
@ops("snapshot")
def test_snapshot_of_unknown_instance_fails(driver, guests):
    with pytest.raises((InstanceNotRunning, InstanceNotFound)):
        driver.snapshot(instance=guests.new("ghost"), name="never")


@cap(Capability.RESCUE)
@ops("rescue", "unrescue")
def test_rescue_and_unrescue(driver, suite, workbench, effects):
    rescue_image, own = suite.rescue_image(), workbench.image.ref
    boot = effects.see("the guest's boot", lambda o: o.boot_id(workbench))
    driver.rescue(instance=workbench, image=rescue_image,
                  rescue_password=secrets.token_urlsafe(12))
    try:
        assert driver.get_info(instance=workbench).state is PowerState.RUNNING
        effects.expect("rescue boots the guest again", lambda o: o.boot_id(workbench) != boot,
                       timeout=suite.opts.boot_timeout, ops=("rescue",))
        if rescue_image.ref != own:
            effects.expect("the rescued guest runs the rescue image",
                           lambda o: o.booted_image(workbench) == rescue_image.ref,
                           ops=("rescue",))
        effects.expect("the rescued guest has its own disk attached",
                       lambda o: o.original_disk_attached(workbench), ops=("rescue",))
        rescued = effects.see("the rescue boot", lambda o: o.boot_id(workbench))
    finally:
        driver.unrescue(instance=workbench)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    effects.expect("unrescue boots the guest again", lambda o: o.boot_id(workbench) != rescued,
                   timeout=suite.opts.boot_timeout, ops=("unrescue",))
    effects.expect("the unrescued guest runs its own image again",
                   lambda o: o.booted_image(workbench) == own, ops=("unrescue",))
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


def volume_target(connection: VolumeConnection) -> str:
    """How an observer names the volume of `connection` (`IQN/LUN` for iSCSI,
    `VOLUME/PATH` for GlusterFS)."""
    data = connection.data
    if connection.driver_volume_type == "glusterfs":
        return parse_glusterfs_volume(connection).source_name
    return f"{data.get('target_iqn')}/{data.get('target_lun')}"


def _attach_detach(driver, suite, instance, connection, caplog, effects) -> None:
    bdm = BlockDevice(connection, suite.opts.volume_mountpoint)
    caplog.set_level(logging.DEBUG)
    driver.attach_volume(instance=instance, block_device=bdm)
    try:
        effects.expect(f"the volume is attached at {bdm.mountpoint}",
                       lambda o: o.volumes(instance).get(bdm.mountpoint)
                       == volume_target(connection), ops=("attach_volume",))
        with pytest.raises(VolumeError):
            driver.attach_volume(instance=instance, block_device=bdm)
    finally:
        driver.detach_volume(instance=instance, block_device=bdm)
    effects.expect(f"the volume is gone from {bdm.mountpoint}",
                   lambda o: bdm.mountpoint not in o.volumes(instance), ops=("detach_volume",))
    with pytest.raises(VolumeNotFound):
        driver.detach_volume(instance=instance, block_device=bdm)
    logged = caplog.text
    for secret in _secrets_of(connection):
        assert secret not in logged, "a volume secret reached the log"


@cap(Capability.VOLUME_ATTACH)
@ops("attach_volume", "detach_volume")
def test_volume_attach_and_detach(driver, suite, workbench, caplog, effects):
    connection = suite.volume()
    if connection is None:
        pytest.skip("no [conformance] volume_connection_info configured")
    _attach_detach(driver, suite, workbench, connection, caplog, effects)


@cap(Capability.VOLUME_ATTACH)
@ops("attach_volume", "detach_volume")
@pytest.mark.virtkit_kind("check")
def test_glusterfs_volume_attach_and_detach(driver, suite, workbench, caplog, effects):
    """A second volume kind, where the run configures one: its failure fails the operations;
    unset, the volume operations stand on volume_connection_info alone."""
    connection = suite.gluster_volume()
    if connection is None:
        pytest.skip("no [conformance] gluster_volume_connection_info configured")
    _attach_detach(driver, suite, workbench, connection, caplog, effects)


@cap(Capability.VOLUME_ISCSI_CHAP)
@ops("attach_volume", "detach_volume")
def test_iscsi_chap_volume(driver, suite, workbench, caplog, effects):
    connection = suite.chap_volume()
    if connection is None:
        pytest.skip("no [conformance] chap_volume_connection_info configured")
    assert str(connection.data.get("auth_method", "")).upper() == "CHAP", (
        "chap_volume_connection_info must have auth_method CHAP")
    _attach_detach(driver, suite, workbench, connection, caplog, effects)
    console = ""
    if driver.supports(Capability.CONSOLE_OUTPUT):
        console = driver.get_console_output(instance=workbench)
    for secret in _secrets_of(connection):
        assert secret not in console, "a CHAP secret reached the console log"


def _with_wrong_password(connection: VolumeConnection) -> VolumeConnection:
    data = {**connection.data, "auth_password": "wrong-" + secrets.token_hex(8)}
    return dataclasses.replace(connection, data=data)


@cap(Capability.VOLUME_ISCSI_CHAP)
@ops("attach_volume", "spawn")
def test_wrong_chap_password_is_refused_and_leaves_nothing(driver, suite, guests, workbench,
                                                          effects, caplog):
    connection = suite.chap_volume()
    if connection is None:
        pytest.skip("no [conformance] chap_volume_connection_info configured")
    wrong = BlockDevice(_with_wrong_password(connection), suite.opts.volume_mountpoint)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VolumeError):
        driver.attach_volume(instance=workbench, block_device=wrong)
    effects.expect("a refused CHAP login attaches nothing",
                   lambda o: wrong.mountpoint not in o.volumes(workbench),
                   ops=("attach_volume",))
    # late: the disks (and the secret) are made before the volume's login fails
    doomed = guests.new("chap-doomed")
    with pytest.raises(VirtError):
        driver.spawn(instance=doomed, block_devices=[wrong])
    effects.expect("a spawn that failed on the volume's login leaves nothing on the engine",
                   lambda o: not o.exists(doomed) and not o.leftovers(doomed), ops=("spawn",))
    assert doomed.uuid not in driver.list_instance_uuids()
    for secret in _secrets_of(wrong.connection):
        assert secret not in caplog.text, "a CHAP secret reached the log"


@cap(Capability.CONSOLE_OUTPUT)
@ops("get_console_output")
def test_console_output_is_bounded_text(driver, suite, shared_instance, effects):
    marker = suite.opts.console_marker
    if marker:
        effects.expect(f"the guest's console shows {marker!r}",
                       lambda o: o.console_has(shared_instance, marker),
                       timeout=suite.opts.boot_timeout)
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
def test_set_admin_password(driver, workbench, caplog, effects):
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    caplog.set_level(logging.DEBUG)
    driver.set_admin_password(instance=workbench, password=old)
    effects.expect("the admin password set works", lambda o: o.password_works(workbench, old))
    driver.set_admin_password(instance=workbench, password=new)
    effects.expect("the new admin password works", lambda o: o.password_works(workbench, new))
    effects.expect("the old admin password no longer works",
                   lambda o: not o.password_works(workbench, old))
    for password in (old, new):
        assert password not in caplog.text, "the admin password reached the log"


@cap(Capability.INJECT_FILE)
@ops("inject_file")
def test_inject_file(driver, workbench, effects):
    path, contents = "/etc/virtkit-conformance", secrets.token_bytes(24) + b"\n"
    driver.inject_file(instance=workbench, path=path, contents=contents)
    assert driver.get_info(instance=workbench).state is PowerState.RUNNING
    effects.expect(f"the guest holds the injected bytes at {path}",
                   lambda o: o.has_file(workbench, path, contents))


@cap(Capability.INSTANCE_DISK_FILE)
@ops("instance_disk_path", "spawn", "destroy")
def test_instance_disk_file_is_kept_by_destroy_without_disks(driver, suite, guests, effects):
    instance = guests.spawn("disk-file")
    path = Path(driver.instance_disk_path(instance=instance))
    assert path.is_absolute() and path.is_file(), f"no root disk file at {path} after spawn"
    driver.power_off(instance=instance, timeout=suite.opts.power_off_timeout)
    mark = effects.see("a mark written into the root disk", lambda o: o.mark_disk(instance))
    driver.destroy(instance=instance, destroy_disks=False)
    assert path.is_file(), "destroy(destroy_disks=False) removed the root disk"
    driver.spawn(instance=instance)  # as recovery does on shared storage
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    if mark is not None:
        effects.expect("a spawn onto a kept disk reuses it (what it held is still there)",
                       lambda o: o.disk_has_mark(instance, mark), ops=("spawn",))
    driver.destroy(instance=instance)
    assert not path.exists(), "destroy left the root disk behind"


def _recovery_spawn(driver, suite, guests, effects, tag: str):
    """Spawn as recovery does: the volumes at boot, a vif and the admin password (each where
    the driver declares what it needs); checks each is on the engine."""
    connection = suite.volume() if driver.supports(Capability.VOLUME_ATTACH) else None
    bdms = [BlockDevice(connection, suite.opts.volume_mountpoint)] if connection else []
    vif = Vif(id=new_uuid(), address="52:54:00:" + secrets.token_bytes(3).hex(":"))
    password = (secrets.token_urlsafe(16)
                if driver.supports(Capability.SET_ADMIN_PASSWORD) else None)
    instance = guests.spawn(tag, block_devices=bdms, vifs=[vif], admin_password=password)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    for bdm in bdms:
        effects.expect(f"spawn attaches its volume at {bdm.mountpoint}",
                       lambda o, b=bdm: o.volumes(instance).get(b.mountpoint)
                       == volume_target(b.connection), ops=("spawn",))
    effects.expect("spawn plugs its vif", lambda o: vif.address in o.vifs(instance),
                   ops=("spawn",))
    if password:
        effects.expect("spawn sets the admin password it is given",
                       lambda o: o.password_works(instance, password), ops=("spawn",))
    return instance, bdms


def _volumes_back(effects, instance, bdms, op: str) -> None:
    for bdm in bdms:
        effects.expect(f"{op} with block_devices has the volume at {bdm.mountpoint}",
                       lambda o, b=bdm: o.volumes(instance).get(b.mountpoint)
                       == volume_target(b.connection), ops=(op,))


@ops("spawn", "power_on")
def test_spawn_and_power_on_as_recovery_does(driver, suite, guests, effects):
    instance, bdms = _recovery_spawn(driver, suite, guests, effects, "recovered")
    driver.power_off(instance=instance, timeout=suite.opts.power_off_timeout)
    driver.power_on(instance=instance, block_devices=bdms)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    _volumes_back(effects, instance, bdms, "power_on")
    driver.destroy(instance=instance, block_devices=bdms)


@cap(Capability.SUSPEND)
@ops("suspend", "resume")
def test_resume_as_recovery_does(driver, suite, guests, effects):
    instance, bdms = _recovery_spawn(driver, suite, guests, effects, "resumed")
    driver.suspend(instance=instance)
    driver.resume(instance=instance, block_devices=bdms)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    _volumes_back(effects, instance, bdms, "resume")
    driver.destroy(instance=instance, block_devices=bdms)


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
