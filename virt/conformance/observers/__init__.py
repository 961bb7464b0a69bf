"""Observers: what the engine shows of an instance, seen without the driver under test.

The conformance suite checks a driver's effects through an observer that talks to the engine
itself (libvirt's API, the docker SDK, the fake's state files, a simulator's state), never
through the driver it is proving. An engine's observer is registered under the entry-point
group `virtkit.conformance_observers`, by default under the driver's entry-point name; a
config names another with `[conformance] observer` (an entry-point name or `module:Class`).
Without one, every probe raises `NotObserved` and the matrix says "declared, effect not
observed" for what needed it, never "supported".

A probe that cannot see something on its engine raises `NotObserved` with the reason; the
suite then notes the effect as not observed instead of failing or passing it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from virt.errors import ConfigError
from virt.model import Instance, PowerState

if TYPE_CHECKING:
    from virt.conformance.settings import SuiteSettings

ENTRY_POINT_GROUP = "virtkit.conformance_observers"


class NotObserved(Exception):
    """The observer cannot see this on its engine (the message says what and why)."""


class Observer:
    """The engine's own view of the suite's instances. Every probe may raise NotObserved.

    Subclasses get the run's settings (the driver's config file, read by the suite) and
    override the probes their engine can answer.
    """

    name = "none"

    def __init__(self, settings: SuiteSettings) -> None:
        self.settings = settings

    def _cannot(self, what: str) -> NotObserved:
        return NotObserved(f"the {self.name!r} observer cannot see {what}")

    # -- the engine object --------------------------------------------------------------------

    def exists(self, instance: Instance) -> bool:
        """Whether the engine holds an object (domain, container, record) of the instance."""
        raise self._cannot("whether the instance exists")

    def power_state(self, instance: Instance) -> PowerState:
        """The instance's power state as the engine reports it."""
        raise self._cannot("the power state")

    def boot_id(self, instance: Instance) -> str:
        """A value that changes each time the guest boots, and only then (pause, suspend and
        resume keep it)."""
        raise self._cannot("the guest's boot")

    def clock(self, instance: Instance) -> float:
        """A counter that advances while the guest runs and stands still while it is paused."""
        raise self._cannot("the guest's clock")

    def leftovers(self, instance: Instance) -> list[str]:
        """What the engine still holds for the instance: objects, files, secrets, sessions."""
        raise self._cannot("what is left of the instance")

    # -- the guest --------------------------------------------------------------------------

    def has_file(self, instance: Instance, path: str, contents: bytes) -> bool:
        """Whether the guest holds exactly `contents` at `path`."""
        raise self._cannot("the guest's files")

    def password_works(self, instance: Instance, password: str) -> bool:
        """Whether `password` is the guest's admin password now."""
        raise self._cannot("the guest's admin password")

    def console_has(self, instance: Instance, marker: str) -> bool:
        """Whether the guest's console (as the engine keeps it) shows `marker`."""
        raise self._cannot("the guest's console")

    # -- disks, images and volumes ----------------------------------------------------------

    def mark_disk(self, instance: Instance) -> str:
        """Write a mark of the suite's into the instance's root disk; the mark's token.
        The suite powers the instance off first (the driver's power_off)."""
        raise self._cannot("into the root disk")

    def disk_has_mark(self, instance: Instance, token: str) -> bool:
        """Whether the instance's root disk holds the mark `token`."""
        raise self._cannot("the root disk's contents")

    def booted_image(self, instance: Instance) -> str:
        """The image reference the guest runs from now (the rescue image while rescued)."""
        raise self._cannot("which image the guest booted")

    def original_disk_attached(self, instance: Instance) -> bool:
        """Whether the instance's own root disk is attached to the guest (it must be while
        rescued, as a second disk)."""
        raise self._cannot("the guest's disks")

    def volumes(self, instance: Instance) -> Mapping[str, str]:
        """The volumes the engine shows attached: mountpoint -> the volume's target (the
        iSCSI IQN and LUN as `IQN/LUN`, or the engine's own name for it)."""
        raise self._cannot("the attached volumes")

    def vifs(self, instance: Instance) -> list[str]:
        """The MAC addresses of the guest's network interfaces, as the engine shows them."""
        raise self._cannot("the network interfaces")

    # -- objects of others ------------------------------------------------------------------

    @contextlib.contextmanager
    def foreign_instance(self) -> Iterator[Instance]:
        """An instance made on the engine by someone else than the driver (removed after)."""
        raise self._cannot("how to make an instance of someone else's")
        yield  # pragma: no cover


def load_observer(settings: SuiteSettings, driver_entry_point: str) -> Observer:
    """The observer the config names, or the one registered for the driver, or the null one."""
    wanted = settings.opts.observer
    if wanted and ":" in wanted:
        return _construct(_import(wanted), settings, wanted)
    name = wanted or driver_entry_point
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        if wanted:
            raise ConfigError(f"[conformance] observer: no observer {wanted!r} is registered "
                              f"(entry-point group {ENTRY_POINT_GROUP})",
                              hint="name a registered observer or give module:Class")
        return Observer(settings)
    try:
        cls = found[0].load()
    except Exception as exc:  # a broken plugin is a config problem, whatever it raised
        raise ConfigError(f"observer {name!r} cannot be loaded: {exc}") from None
    return _construct(cls, settings, name)


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"[conformance] observer {path!r} cannot be imported: {exc}",
                          hint="give module:Class of an Observer subclass") from None


def _construct(cls: Any, settings: SuiteSettings, name: str) -> Observer:
    if not (isinstance(cls, type) and issubclass(cls, Observer)):
        raise ConfigError(f"observer {name!r} is not a virt.conformance.observers.Observer")
    return cls(settings)
