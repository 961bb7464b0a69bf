"""libvirt lifecycle events into the kit's dispatcher, and the resync after a reconnect.

libvirt's events arrive on its event thread and are only queued there; the kit's
`LifecycleDispatcher` translates them on its own thread (holding STOPPED back so a reboot is
not a shutdown). A `PowerStateTracker` follows every translated event, so that after a lost
connection is reopened a fresh listing emits what changed while no event could arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import libvirt

from drivers.libvirt import domains, states
from virt.driver.transitions import POWER_STATE_AFTER, LifecycleDispatcher, PowerStateTracker
from virt.events import LifecycleEvent
from virt.model import PowerState

LOG = logging.getLogger(__name__)

_TRANSITION_EVENTS = frozenset({
    libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED,
})
# UNDEFINED has no transition but drops the driver's kept handle of the domain.
_USED_EVENTS = _TRANSITION_EVENTS | {libvirt.VIR_DOMAIN_EVENT_UNDEFINED}
_Raw = tuple["str | libvirt.virDomain", int, int, "libvirt.virConnect | None"]
#: (connection, domain UUID, domain handle, libvirt event): sees every used event first.
Observer = Callable[[libvirt.virConnect, str, libvirt.virDomain, int], None]


def list_power_states(conn: libvirt.virConnect,
                      ownership: domains.Ownership) -> dict[str, PowerState]:
    """The power state of each of virtkit's domains by UUID: one listing, one state read per
    domain (someone else's domains are not tracked, so no event is made up for them)."""
    saved = {d.UUIDString() for d in conn.listAllDomains(
        libvirt.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)}
    found = {}
    for dom in ownership.ours(conn.listAllDomains(0)):
        uuid = dom.UUIDString()
        found[uuid] = states.power_state(dom.state()[0], uuid in saved)
    return found


class LibvirtEvents:
    """The libvirt side of lifecycle events: queue, translate, track, resync."""

    def __init__(self, emit: Callable[[LifecycleEvent], None], *, stopped_delay: float,
                 ownership: domains.Ownership, observe: Observer | None = None) -> None:
        self._observe = observe
        self._ownership = ownership
        # Domains judged virtkit's, in the events' own order: the driver forgets a domain it
        # removed at once, while the events it had before are still queued.
        self._ours: set[str] = set()
        self.tracker = PowerStateTracker()
        self._dispatcher: LifecycleDispatcher[_Raw | LifecycleEvent] = LifecycleDispatcher(
            emit, stopped_delay=stopped_delay, translate=self._translate, name="libvirt")

    def push(self, domain: str | libvirt.virDomain, event: int, detail: int,
             conn: libvirt.virConnect | None = None) -> None:
        """Called on libvirt's event thread: only enqueue, and only what is used.

        `domain` is the event's domain handle (or its UUID). Events nobody uses (DEFINED,
        ...) are dropped here, so they do not wake the dispatcher thread.
        """
        if event in _USED_EVENTS:
            self._dispatcher.push((domain, event, detail, conn))

    def claim(self, uuid: str) -> None:
        """The driver defined this domain: its events are an instance's."""
        self._ours.add(uuid)

    def baseline(self, current: dict[str, PowerState]) -> None:
        """Start tracking from `current`, virtkit's domains (when events are first listened
        to)."""
        self._ours.update(current)
        self.tracker.resync(current, emit=False)

    def resync(self, current: dict[str, PowerState]) -> list[LifecycleEvent]:
        """Emit what changed between the tracked states and `current` (after a reconnect)."""
        self._ours.update(current)
        changes = self.tracker.resync(current)
        for event in changes:
            LOG.info("after the reconnect: %s %s", event.instance_uuid, event.transition.value)
            self._dispatcher.push(event)
        return changes

    def stop(self) -> None:
        self._dispatcher.stop()

    def _translate(self, item: _Raw | LifecycleEvent) -> LifecycleEvent | None:
        if isinstance(item, LifecycleEvent):  # from a resync: the tracker has it already
            return item
        domain, event, detail, conn = item
        uuid = domain if isinstance(domain, str) else domain.UUIDString()
        if self._observe is not None and conn is not None and not isinstance(domain, str):
            self._observe(conn, uuid, domain, event)
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self.tracker.observe(uuid, None)
            self._ours.discard(uuid)
            return None
        kind = states.transition(event, detail)
        if kind is None:
            return None
        if not isinstance(domain, str) and not self._is_ours(domain, uuid):
            return None  # someone else's domain: not an instance of ours
        self.tracker.observe(uuid, POWER_STATE_AFTER[kind])
        return LifecycleEvent(uuid, kind)

    def _is_ours(self, domain: libvirt.virDomain, uuid: str) -> bool:
        if uuid in self._ours:
            return True
        if self._ownership.is_ours(domain, uuid):
            self._ours.add(uuid)
            return True
        return False
