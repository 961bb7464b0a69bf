"""ExampleDriver: a small but complete compute driver, built on the kit.

It is the worked example of docs/writing-a-driver.md and passes the conformance suite
(tests/unit/test_example_driver.py runs it). The engine is `tests.example_driver.engine`;
the driver reaches it only through `connection.Connection`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from oslo_config import cfg

from tests.example_driver import images, spec, states
from tests.example_driver.connection import Connection
from tests.example_driver.engine import EngineClient
from tests.example_driver.events import EventFeed
from virt.driver import Capability, ComputeDriver, options, power, spawn_image
from virt.driver.rollback import SpawnRollback
from virt.errors import InstanceNotFound, InvalidRequest
from virt.model import (
    BlockDevice,
    HostResources,
    Instance,
    InstanceInfo,
    PowerOffResult,
    PowerState,
    Vif,
)

LOG = logging.getLogger(__name__)
T = TypeVar("T")

EXAMPLE_OPTS: list[cfg.Opt] = [
    cfg.StrOpt("engine_path", default="$state_path/example-engine",
               help="Directory of the example engine (where it keeps its guests)."),
    options.call_timeout(10.0, deprecated_name="engine_timeout"),
    options.reboot_timeout(),
    options.stopped_event_delay(),
    cfg.IntOpt("vcpus", default=4, min=1, help="vCPUs this host offers."),
    cfg.IntOpt("memory_mb", default=4096, min=1,
               help="Memory the engine may give its running guests, in MiB."),
]


class ExampleDriver(ComputeDriver):
    """The example engine's guests as virtkit instances."""

    name: ClassVar[str] = "example"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.PAUSE, Capability.LIFECYCLE_EVENTS, Capability.INSTANCE_DISK_FILE})
    config_group: ClassVar[str | None] = "example"
    config_opts: ClassVar[Sequence[cfg.Opt]] = EXAMPLE_OPTS

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        opts = conf.example
        self._host: str = conf.host
        self._feed: EventFeed | None = None
        self._conn = Connection(opts.engine_path, timeout=opts.call_timeout,
                                memory_mb=opts.memory_mb, on_connect=self._connected)

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[EngineClient], T], instance: Instance) -> T:
        return self._conn.call(what, call, instance=instance.uuid)

    def _connected(self, client: EngineClient, again: bool) -> None:
        """Each new client: watch its changes; after a reconnect, emit what was missed."""
        client.watch(self._engine_changed)
        if again and self._feed is not None:
            self._feed.resync(self._states(client), emit=True)

    def _engine_changed(self, uuid: str, state: str | None) -> None:
        if self._feed is not None:
            self._feed.changed(uuid, state)

    def _guests(self, client: EngineClient) -> list[dict[str, Any]]:
        return [g for g in client.guests() if spec.on_host(g, self._host)]

    def _states(self, client: EngineClient) -> dict[str, PowerState]:
        return {g["uuid"]: states.power_state(g["state"]) for g in self._guests(client)}

    def _guest(self, instance: Instance) -> dict[str, Any]:
        guest = self._call("look up the guest", lambda c: c.guest(instance.uuid), instance)
        if not spec.on_host(guest, self._host):
            raise InstanceNotFound(instance.uuid, hint=f"it is not a guest of {self._host}")
        return guest

    def _state(self, instance: Instance) -> PowerState:
        return states.power_state(self._guest(instance)["state"])

    def _disk(self, instance: Instance) -> Path:
        return images.root_disk_path(self.conf.instances_path, instance.uuid)

    # -- host ------------------------------------------------------------------------------

    def init_host(self, *, host: str) -> None:
        if not host:
            raise InvalidRequest("init_host needs a host name")
        self._host = host
        client = self._conn.client()  # HypervisorUnavailable now, not on the first call
        if self._feed is None:
            self._feed = EventFeed(self.emit_event,
                                   stopped_delay=self.conf.example.stopped_event_delay)
            self._feed.resync(self._states(client), emit=False)  # the baseline

    def cleanup_host(self, *, host: str) -> None:
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        self._conn.close()

    def get_available_resource(self) -> HostResources:
        guests = self._conn.call("list the guests", self._guests)
        version = self._conn.call("read the version", lambda c: c.version())
        disk = shutil.disk_usage(self._conn.root)
        opts = self.conf.example
        return HostResources(
            vcpus=opts.vcpus, memory_mb=opts.memory_mb, local_gb=disk.total >> 30,
            vcpus_used=sum(g["vcpus"] for g in guests),
            memory_mb_used=sum(g["memory_mb"] for g in guests),
            local_gb_used=disk.used >> 30, hypervisor_type="example",
            hypervisor_version=version, hypervisor_hostname=self._host,
            cpu_info=json.dumps({"arch": "x86_64", "vendor": "example"}),
            disk_available_least=disk.free >> 30,
            supported_instances=(("x86_64", "example", "hvm"),),
        )

    def instance_disk_path(self, *, instance: Instance) -> str:
        return str(self._disk(instance))

    # -- state -----------------------------------------------------------------------------

    def list_instances(self) -> list[str]:
        return sorted(g["name"] for g in self._conn.call("list the guests", self._guests))

    def list_instance_uuids(self) -> list[str]:
        return sorted(g["uuid"] for g in self._conn.call("list the guests", self._guests))

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        guest = self._guest(instance)
        memory_kb = guest["memory_mb"] * 1024
        return InstanceInfo(state=states.power_state(guest["state"]), internal_id=guest["uuid"],
                            max_mem_kb=memory_kb, mem_kb=memory_kb, num_cpu=guest["vcpus"])

    def instance_exists(self, *, instance: Instance) -> bool:
        try:
            self._guest(instance)
        except InstanceNotFound:
            return False
        return True

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        power_on: bool = True,
    ) -> None:
        image = spawn_image(instance)
        disk = self._disk(instance)
        design = spec.guest_spec(instance, host=self._host, disk=str(disk))
        with SpawnRollback(f"{instance.name} ({instance.uuid})") as rollback:
            if images.prepare_root_disk(disk, image):  # False: a disk there is reused
                rollback.push(f"root disk {disk}", lambda: images.remove_root_disk(disk))
            self._call("define the guest", lambda c: c.define(design), instance)
            rollback.push(f"guest {instance.uuid}", lambda: self._remove_guest(instance))
            if power_on:
                self._call("start the guest", lambda c: c.start(instance.uuid), instance)
        LOG.info("example: spawned %s (%s)", instance.name, instance.uuid)

    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        try:
            self._guest(instance)
            self._remove_guest(instance)
        except InstanceNotFound:
            LOG.debug("example: instance %s has no guest to remove", instance.uuid)
        if destroy_disks:
            images.remove_root_disk(self._disk(instance))

    def _remove_guest(self, instance: Instance) -> None:
        self._call("power the guest off", lambda c: c.poweroff(instance.uuid), instance)
        self._call("undefine the guest", lambda c: c.undefine(instance.uuid), instance)

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        timeout = power.check_timeout(timeout)
        state = self._state(instance)
        if hard:
            self._call("power the guest off", lambda c: c.poweroff(instance.uuid), instance)
        else:
            power.require_running(state, instance.uuid, "soft reboot", hint="use a hard reboot")
            grace = power.reboot_grace(timeout, self.conf.example.reboot_timeout)
            self.power_off(instance=instance, timeout=grace, retry_interval=grace / 3)
        self._call("start the guest", lambda c: c.start(instance.uuid), instance)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        def is_off() -> bool:
            return self._state(instance) is PowerState.SHUTDOWN

        return power.graceful_power_off(
            timeout=timeout, retry_interval=retry_interval, is_off=is_off,
            request_stop=lambda: self._call(
                "shut the guest down", lambda c: c.shutdown(instance.uuid), instance),
            wait_off=lambda seconds: power.poll_until(is_off, seconds),
            force_off=lambda: self._call(
                "power the guest off", lambda c: c.poweroff(instance.uuid), instance),
        )

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        if power.should_power_on(self._state(instance), instance.uuid):
            self._call("start the guest", lambda c: c.start(instance.uuid), instance)

    def pause(self, *, instance: Instance) -> None:
        if power.should_pause(self._state(instance), instance.uuid):
            self._call("freeze the guest", lambda c: c.freeze(instance.uuid), instance)

    def unpause(self, *, instance: Instance) -> None:
        if power.should_unpause(self._state(instance), instance.uuid):
            self._call("thaw the guest", lambda c: c.thaw(instance.uuid), instance)
