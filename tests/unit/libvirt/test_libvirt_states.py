"""State and event mapping, and the delayed STOPPED event."""

from __future__ import annotations

import threading

import libvirt

from drivers.libvirt import lifecycle
from virt.events import Transition
from virt.model import PowerState


def test_power_states():
    assert lifecycle.power_state(libvirt.VIR_DOMAIN_BLOCKED) is PowerState.RUNNING
    assert lifecycle.power_state(libvirt.VIR_DOMAIN_SHUTOFF) is PowerState.SHUTDOWN
    assert lifecycle.power_state(libvirt.VIR_DOMAIN_SHUTOFF, True) is PowerState.SUSPENDED
    assert lifecycle.power_state(libvirt.VIR_DOMAIN_PMSUSPENDED) is PowerState.SUSPENDED
    assert lifecycle.power_state(99) is PowerState.UNKNOWN


def test_transitions():
    t = lifecycle.transition
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
    dispatcher = lifecycle.EventDispatcher(emit, stopped_delay=0.3)
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
