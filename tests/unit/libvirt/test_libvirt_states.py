"""State and event mapping, the delayed STOPPED event, the tracker and its resync."""

from __future__ import annotations

import threading
import time

import libvirt

from drivers.libvirt import domains, events, states
from virt.events import Transition
from virt.model import PowerState


def test_power_states():
    assert states.power_state(libvirt.VIR_DOMAIN_BLOCKED) is PowerState.RUNNING
    assert states.power_state(libvirt.VIR_DOMAIN_SHUTOFF) is PowerState.SHUTDOWN
    assert states.power_state(libvirt.VIR_DOMAIN_SHUTOFF, True) is PowerState.SUSPENDED
    assert states.power_state(libvirt.VIR_DOMAIN_PMSUSPENDED) is PowerState.SUSPENDED
    assert states.power_state(99) is PowerState.UNKNOWN


def test_transitions():
    t = states.transition
    assert t(libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED) is Transition.SUSPENDED
    assert t(libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED) is Transition.CRASHED
    assert t(libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED) is Transition.RESUMED
    assert t(libvirt.VIR_DOMAIN_EVENT_DEFINED, 0) is None


def _collect():
    got: list = []
    done = threading.Event()

    def emit(event):
        got.append(event.transition)
        done.set()

    return got, done, emit


def test_stopped_is_delayed_and_a_start_cancels_it():
    got, done, emit = _collect()
    dispatcher = events.LibvirtEvents(emit, stopped_delay=0.3, ownership=domains.Ownership())
    try:
        dispatcher.push("u", libvirt.VIR_DOMAIN_EVENT_STOPPED, 0)
        dispatcher.push("u", libvirt.VIR_DOMAIN_EVENT_STARTED, 0)
        assert done.wait(2)
        done.clear()
        assert not done.wait(0.6)  # the STOPPED never comes
        assert got == [Transition.STARTED]
        dispatcher.push("u", libvirt.VIR_DOMAIN_EVENT_STOPPED, 0)
        assert done.wait(2)
        assert got == [Transition.STARTED, Transition.STOPPED]
    finally:
        dispatcher.stop()


def _wait(condition, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_events_keep_the_tracker_and_a_resync_emits_what_changed_meanwhile():
    got, done, emit = _collect()
    dispatcher = events.LibvirtEvents(emit, stopped_delay=0, ownership=domains.Ownership())
    try:
        dispatcher.baseline({"a": PowerState.SHUTDOWN, "b": PowerState.RUNNING})
        dispatcher.push("a", libvirt.VIR_DOMAIN_EVENT_STARTED, 0)
        dispatcher.push("b", libvirt.VIR_DOMAIN_EVENT_UNDEFINED, 0)
        assert done.wait(2) and got == [Transition.STARTED]
        assert _wait(lambda: dispatcher.tracker.known() == {"a": PowerState.RUNNING})
        # Meanwhile (no events): a was paused and c appeared, running.
        changes = dispatcher.resync({"a": PowerState.PAUSED, "c": PowerState.RUNNING})
        assert sorted((e.instance_uuid, e.transition.value) for e in changes) == [
            ("a", "paused"), ("c", "started")]
        assert _wait(lambda: len(got) == 3), got
        assert sorted(t.value for t in got[1:]) == ["paused", "started"]
        assert dispatcher.resync({"a": PowerState.PAUSED, "c": PowerState.RUNNING}) == []
    finally:
        dispatcher.stop()
