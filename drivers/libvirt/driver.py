"""The libvirt compute driver: KVM/QEMU guests, Xen PV guests (libxl) and libvirt's test driver."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import libvirt
from oslo_config import cfg

from drivers.libvirt import design, domains, events, images, resources, states, volumes, xen, xml
from drivers.libvirt.connection import Connection, classify
from drivers.libvirt.opts import OPTS
from drivers.libvirt.volume_types import LibvirtVolumes
from drivers.libvirt.volumes import IscsiNativeVolumes, PreparedVolume
from drivers.libvirt.volumes_gluster import GlusterVolumes
from drivers.libvirt.volumes_host import IscsiHostVolumes
from virt.driver import Capability, ComputeDriver, power, spawn_image
from virt.driver.errors import EngineErrors, FaultKind
from virt.driver.rollback import SpawnRollback
from virt.errors import (
    AccessDenied,
    InstanceExists,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    SpawnError,
    UnsupportedOperation,
    VirtError,
    VolumeError,
    VolumeNotFound,
)
from virt.events import Listener
from virt.model import (
    BlockDevice,
    HostResources,
    ImageRef,
    Instance,
    InstanceInfo,
    PowerOffResult,
    PowerState,
    Vif,
    VolumeConnector,
)

LOG = logging.getLogger(__name__)
T = TypeVar("T")


#: libvirt's connection types that attach no volume, and why.
_NO_VOLUMES = {"TEST": "libvirt's test driver cannot attach devices or hold secrets",
               xen.ENGINE_TYPE: xen.UNSUPPORTED_REASON}

#: libvirt's errors in virtkit's terms (see connection.classify).
ERRORS = EngineErrors("libvirt", classify)


class LibvirtDriver(ComputeDriver):
    """Guests on libvirt: qcow2 overlays on cached base images, native iSCSI volumes."""

    name = "libvirt"
    capabilities = frozenset({
        Capability.PAUSE,
        Capability.SUSPEND,
        Capability.SNAPSHOT,
        Capability.VOLUME_ATTACH,
        Capability.VOLUME_ISCSI_CHAP,
        Capability.CONSOLE_OUTPUT,
        Capability.LIFECYCLE_EVENTS,
        Capability.INSTANCE_DISK_FILE,
    })
    config_group = "libvirt"
    config_opts = OPTS

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        opts = conf.libvirt
        self._opts = opts
        self._instances_path = conf.instances_path
        self._cache = images.ImageCache(opts.images_path)
        self._owned = domains.Ownership()  # which domains are virtkit's
        self._lifecycle = events.LibvirtEvents(self.emit_event,
                                            stopped_delay=opts.stopped_event_delay,
                                            ownership=self._owned,
                                            observe=self._observe_event)
        self._connection = Connection(
            opts.connection_uri,
            on_lifecycle=self._lifecycle.push,
            keepalive_interval=opts.keepalive_interval,
            keepalive_count=opts.keepalive_count,
            call_timeout=opts.call_timeout,
            on_reconnect=self._resync_later,
        )
        #: The name of the host this driver serves (set by init_host).
        self._host: str | None = None
        # host mode: os-brick and the kernel initiator (os-brick imported only when used).
        self._host_volumes = IscsiHostVolumes(
            probe_timeout=opts.volume_probe_timeout,
            lock_path=os.path.join(conf.state_path, "os-brick-locks"),
        ) if opts.iscsi_attach == "host" else None
        self._volumes = LibvirtVolumes(
            self._host_volumes or IscsiNativeVolumes(self._connection,
                                                     probe_timeout=opts.volume_probe_timeout),
            GlusterVolumes(self._connection, instances_path=conf.instances_path,
                           native=opts.gluster_native, probe_timeout=opts.volume_probe_timeout,
                           mount_namespace_pidfile=opts.gluster_mount_namespace_pidfile,
                           local=resources.is_local_system_uri(opts.connection_uri)))
        self._undefiner = domains.Undefiner(self._owned)
        self._virt_type: str | None = None
        self._iscsi_mode = opts.iscsi_attach  # options are read once (each read costs ~4 us)
        self._disk_cachemode = opts.disk_cachemode
        self._watching = False  # events listened to: the tracker has a baseline
        # Domains this driver defined without a CHAP secret and attached no volume to since:
        # their destroy need not read the definition back to find secrets to remove. Any
        # other domain (e.g. after a restart of this process) has its definition read.
        self._secret_free: set[str] = set()

    @property
    def connection(self) -> Connection:
        """The libvirt connection this driver uses."""
        return self._connection

    def _observe_event(self, conn: libvirt.virConnect, uuid: str, dom: libvirt.virDomain,
                       event: int) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:  # whoever undefined it: forget it
            self._secret_free.discard(uuid)
            self._owned.forget(uuid)
        self._connection.observe(conn, uuid, dom, event)

    def register_event_listener(self, listener: Listener) -> None:
        super().register_event_listener(listener)
        if self._watching:
            return
        # libvirt's events are paid for only once listened to; the states listed now are
        # what a resync after a reconnect compares with.
        self._connection.watch_lifecycle()
        self._lifecycle.baseline(self._power_states())
        self._watching = True

    def _power_states(self) -> dict[str, PowerState]:
        return self._call(lambda c: events.list_power_states(c, self._owned),
                          "list domain states")

    def _resync_later(self) -> None:
        """After a reconnect: emit, off the caller's thread, what changed while it was lost."""
        if self._watching:
            threading.Thread(target=self._resync, name="libvirt-resync", daemon=True).start()

    def _resync(self) -> None:
        try:
            current = self._power_states()
        except VirtError as exc:  # lost again: the next reconnect resyncs
            LOG.warning("cannot resync power states after the reconnect: %s", exc.message)
            return
        self._lifecycle.resync(current)

    # -- host ------------------------------------------------------------------------------

    def init_host(self, *, host: str) -> None:
        self._host = host
        self._check_iscsi_mode()
        os.makedirs(self._instances_path, mode=0o711, exist_ok=True)
        os.makedirs(self._opts.images_path, mode=0o711, exist_ok=True)
        self._check_qemu_reaches_paths()
        self._connection.connection()
        self._domain_type()
        self.narrow_capabilities(  # what _check_volumes refuses there
            (Capability.VOLUME_ATTACH, Capability.VOLUME_ISCSI_CHAP)
            if self._engine_type in _NO_VOLUMES else (),
            reason=_NO_VOLUMES.get(self._engine_type, ""))

    def _check_qemu_reaches_paths(self) -> None:
        """On the local system daemon, ConfigError if QEMU's user cannot reach our files."""
        if not resources.is_local_system_uri(self._opts.connection_uri):
            return
        user = resources.qemu_user()
        if user is not None:
            resources.check_traversable({"[libvirt] images_path": self._opts.images_path,
                                         "[DEFAULT] instances_path": self._instances_path},
                                        user)

    def cleanup_host(self, *, host: str) -> None:
        self._connection.close()
        self._lifecycle.stop()

    def _check_iscsi_mode(self) -> None:
        """Host mode: ConfigError naming what is missing (os-brick, iscsiadm, iscsi_tcp)."""
        if self._host_volumes is not None:
            self._host_volumes.check()

    def _check_volumes(self, operation: str) -> None:
        """UnsupportedOperation, before any probe or secret, where volumes cannot attach."""
        self._check_iscsi_mode()
        if self._engine_type in _NO_VOLUMES:
            raise UnsupportedOperation(self.name, operation,
                                       reason=_NO_VOLUMES[self._engine_type])

    @functools.cached_property
    def _engine_type(self) -> str:
        """libvirt's driver behind the URI ("QEMU", "TEST", "Xen"): the same after a reconnect."""
        return self._call(lambda c: str(c.getType()), "read the connection's type")

    def _domain_type(self) -> str:
        """The domain type this driver defines: test, kvm, qemu or xen (auto: probed once)."""
        if self._virt_type is None:
            self._virt_type = resources.domain_type(
                self._opts.connection_uri, self._opts.virt_type, self._connection)
        return self._virt_type

    def get_available_resource(self) -> HostResources:
        os.makedirs(self._instances_path, mode=0o711, exist_ok=True)
        virt_type = self._domain_type()
        return self._call(
            lambda c: resources.host_resources(c, self._instances_path, virt_type, self._owned),
            "read the host's resources")

    def get_volume_connector(self, *, instance: Instance | None = None) -> VolumeConnector:
        self._check_volumes("get_volume_connector")
        return VolumeConnector(host=self.conf.host, ip=resources.local_ip(),
                               initiator=self._volumes.initiator, multipath=False)

    # -- state -----------------------------------------------------------------------------

    def list_instances(self) -> list[str]:
        return self._call(lambda c: [d.name() for d in self._owned.ours(c.listAllDomains(0))],
                          "list domains")

    def list_instance_uuids(self) -> list[str]:
        return self._call(
            lambda c: [d.UUIDString() for d in self._owned.ours(c.listAllDomains(0))],
            "list domains")

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        """The instance's state; HypervisorUnavailable while libvirtd is unreachable (UNKNOWN
        only for a domain libvirt reports in no state)."""
        return self._on_domain(instance, self._info, "read its state")

    def _info(self, dom: libvirt.virDomain) -> InstanceInfo:
        state, max_kb, mem_kb, ncpu, cpu_ns = dom.info()
        dom_id = dom.ID()
        if (dom_id < 0) != (state == libvirt.VIR_DOMAIN_SHUTOFF) and \
                state != libvirt.VIR_DOMAIN_CRASHED:
            # A kept handle from before the domain was started or stopped elsewhere (its
            # event not yet seen) carries an old ID: look the domain up again for it.
            fresh = self._connection.lookup(dom.connect(), dom.UUIDString(), fresh=True)
            dom_id = fresh.ID() if fresh is not None else -1
        saved = state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0) == 1
        return InstanceInfo(state=states.power_state(state, saved), internal_id=str(dom_id),
                            max_mem_kb=max_kb, mem_kb=mem_kb, num_cpu=ncpu, cpu_time_ns=cpu_ns)

    def _power_state(self, instance: Instance) -> PowerState:
        """The guest's power state now (InstanceNotFound if it has no domain)."""
        return self._on_domain(instance, states.domain_power_state, "read its state")

    def instance_exists(self, *, instance: Instance) -> bool:
        return self._call(lambda c: self._owned.is_ours(self._connection.lookup(
            c, instance.uuid, fresh=True), instance.uuid), "look up a domain")

    def instance_disk_path(self, *, instance: Instance) -> str:
        """Where spawn keeps (or would make) the instance's root disk on this host; recovery
        checks it is there (shared storage) before spawning."""
        return images.root_disk_path(self._instances_path, instance.uuid)

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
        self._check_spawn(instance, block_devices)
        virt_type = self._domain_type()
        cache_mode = self._cache_mode()
        try:
            with SpawnRollback(f"{instance.name} ({instance.uuid})") as rollback:
                disks = images.create_instance_disks(
                    self._cache, self._instances_path, instance.uuid, image, instance.flavor,
                    rollback=rollback)
                prepared = [self._prepare_volume(rollback, instance, bdm, cache_mode)
                            for bdm in block_devices]
                domain_xml = design.domain_xml(
                    instance=instance, virt_type=virt_type, disks=disks,
                    volume_disks=[p.disk for p in prepared], vifs=vifs, cache_mode=cache_mode,
                    xen_bridge=self._opts.xen_bridge)
                secret_free = not any(p.secret_usage for p in prepared)
                self._connection.call(
                    lambda c: self._define(c, rollback, instance.uuid, domain_xml,
                                           secret_free=secret_free, power_on=power_on),
                    idempotent=False)
        except libvirt.libvirtError as exc:
            raise _spawn_error(instance, exc) from None
        LOG.info("spawned %s (%s)%s", instance.name, instance.uuid,
                 "" if power_on else " without starting it")

    def _check_spawn(self, instance: Instance, block_devices: Sequence[BlockDevice]) -> None:
        """What fails before anything is made: the volumes' rows and mode, an existing domain."""
        self._check_iscsi_mode()
        for bdm in block_devices:  # bad connection_info fails before anything is made
            self._volumes.validate(bdm)
        if block_devices:
            self._check_volumes("attach_volume")
        # Needed: defineXML of a domain with the same uuid and name redefines it instead of
        # failing, and the check comes before any file is made for the instance.
        if self._call(lambda c: self._connection.lookup(c, instance.uuid, fresh=True),
                      "look up a domain") is not None:  # virtkit's or another's
            raise InstanceExists(instance.uuid)

    def _prepare_volume(self, rollback: SpawnRollback, instance: Instance, bdm: BlockDevice,
                        cache_mode: str | None) -> PreparedVolume:
        """Prepare one volume (secret or host login) and push its undo."""
        volume = self._volumes.prepare(instance, bdm, cache=cache_mode)
        undo = self._volumes.undo_for(volume)  # a host login or a FUSE mount
        if undo is not None:
            rollback.push(f"the host's connection of {bdm.mountpoint}", undo)
        if volume.secret_usage:
            usage = volume.secret_usage
            rollback.push(f"libvirt secret {usage}", lambda: self._volumes.remove_secret(usage))
        return volume

    def _define(self, conn: libvirt.virConnect, rollback: SpawnRollback, uuid: str,
                domain_xml: str, *, secret_free: bool, power_on: bool) -> None:
        dom = conn.defineXML(domain_xml)
        self._owned.claim(uuid)
        if self._watching:
            self._lifecycle.claim(uuid)
        rollback.push(f"domain {uuid}", lambda: self._connection.call(
            lambda c: self._remove_domain(c, uuid)))
        if secret_free:
            self._secret_free.add(uuid)
        self._connection.remember(conn, uuid, dom)
        if power_on:
            dom.createWithFlags(0)

    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        uuid = instance.uuid
        read = uuid not in self._secret_free
        removed = self._call(lambda c: self._remove_domain(c, uuid, read_definition=read),
                             "destroy it")
        self._volumes.destroyed(instance.uuid, removed, block_devices)
        if destroy_disks:
            images.remove_instance_dir(images.instance_dir(self._instances_path, instance.uuid))

    def _remove_domain(self, conn: libvirt.virConnect, uuid: str, *,
                       read_definition: bool = True) -> str | None:
        """Stop and undefine the domain; its last XML, or None if there was none."""
        try:
            return self._undefiner.remove(self._connection, conn, uuid,
                                          read_definition=read_definition)
        finally:
            self._secret_free.discard(uuid)

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        if not hard:
            power.require_running(self._power_state(instance), instance.uuid, "soft reboot")
            grace = power.reboot_grace(timeout, self._opts.reboot_timeout)
            result = self._graceful_power_off(instance, timeout=grace, retry_interval=grace)
            if result.forced:
                LOG.warning("%s did not shut down within %ss: rebooting it hard",
                            instance.uuid, grace)
            self._on_domain(instance, lambda d: d.createWithFlags(0), "start it",
                            idempotent=False)
            return

        def hard_reboot(dom: libvirt.virDomain) -> None:
            domains.destroy(dom)
            dom.createWithFlags(0)

        self._on_domain(instance, hard_reboot, "reboot it", idempotent=False)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        return self._graceful_power_off(instance, timeout=timeout, retry_interval=retry_interval)

    def _graceful_power_off(self, instance: Instance, *, timeout: float,
                            retry_interval: float) -> PowerOffResult:
        """ACPI shutdown every `retry_interval`, the plug pulled after `timeout` (the kit's)."""
        def is_off() -> bool:
            return not self._on_domain(instance, lambda d: d.isActive() == 1, "read its state")

        def request_stop() -> None:
            try:
                self._on_domain(instance, lambda d: d.shutdown(), "shut it down")
            except InvalidState:
                pass  # stopped meanwhile: the next look sees it

        return power.graceful_power_off(
            timeout=timeout, retry_interval=retry_interval, is_off=is_off,
            request_stop=request_stop, wait_off=lambda s: power.poll_until(is_off, s),
            force_off=lambda: self._on_domain(instance, domains.destroy, "force it off"))

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        if power.should_power_on(self._power_state(instance), instance.uuid):
            self._on_domain(instance, lambda d: d.createWithFlags(0), "start it",
                            idempotent=False)

    def pause(self, *, instance: Instance) -> None:
        if power.should_pause(self._power_state(instance), instance.uuid):
            self._on_domain(instance, lambda d: d.suspend(), "pause it")

    def unpause(self, *, instance: Instance) -> None:
        if power.should_unpause(self._power_state(instance), instance.uuid):
            self._on_domain(instance, lambda d: d.resume(), "unpause it")

    def suspend(self, *, instance: Instance) -> None:
        if power.should_suspend(self._power_state(instance), instance.uuid):
            self._on_domain(instance, lambda d: xen.managed_save(d, self._domain_type()),
                            "suspend it", idempotent=False)

    def resume(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        if power.should_resume(self._power_state(instance), instance.uuid):
            self._on_domain(instance, lambda d: d.createWithFlags(0), "resume it",
                            idempotent=False)

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        definition = self._definition(instance)
        root = next((d for d in definition.disks if d.target_dev in ("vda", xen.ROOT_DEV)),
                    None)
        if root is None or not root.source_path:
            raise InvalidState(f"instance {instance.uuid} has no local root disk to snapshot")
        # A running guest is saved first, so the overlay is consistent, then restored.
        was_active = self._on_domain(instance, lambda d: d.isActive() == 1, "read its state")
        if was_active:
            self._on_domain(instance, lambda d: xen.managed_save(d, self._domain_type()),
                            "save it", idempotent=False)
        try:
            ref = images.snapshot_disk(root.source_path, self._opts.images_path, name)
        finally:
            if was_active:
                self._on_domain(instance, lambda d: d.createWithFlags(0), "restore it",
                                idempotent=False)
        return images.snapshot_ref(ref, definition.os, name)

    # -- volumes ---------------------------------------------------------------------------

    def attach_volume(self, *, instance: Instance, block_device: BlockDevice) -> None:
        self._check_volumes("attach_volume")
        self._volumes.validate(block_device)
        definition = self._definition(instance)
        if any(d.target_dev == block_device.device_name for d in definition.disks):
            # The conformance contract: a second attach of a volume is a VolumeError.
            raise VolumeError(f"instance {instance.uuid} already has a disk at "
                              f"{block_device.mountpoint}", hint="choose a free device name")
        # From here on its destroy reads the definition back to find the volume's secret.
        self._secret_free.discard(instance.uuid)
        prepared = self._volumes.prepare(instance, block_device, cache=self._cache_mode())
        disk_xml = xml.Disk.to_element(prepared.disk)

        def attach(dom: libvirt.virDomain) -> None:
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.attachDeviceFlags(xml.etree.tostring(disk_xml, encoding="unicode"), flags)

        try:
            self._on_domain(instance, attach, "attach a volume", idempotent=False)
        except BaseException as exc:
            self._volumes.release([prepared.disk])
            if isinstance(exc, VolumeError | InstanceNotFound | UnsupportedOperation):
                raise
            if isinstance(exc, VirtError):
                raise VolumeError(f"attaching {block_device.mountpoint} to {instance.uuid} "
                                  f"failed: {exc.message}") from None
            raise

    def detach_volume(self, *, instance: Instance, block_device: BlockDevice) -> None:
        self._check_volumes("detach_volume")
        definition = self._definition(instance, inactive=True)
        disk = next((d for d in definition.disks if d.target_dev == block_device.device_name), None)
        if disk is None:
            raise VolumeNotFound(f"instance {instance.uuid} has no volume at "
                                 f"{block_device.mountpoint}")
        disk_xml = xml.etree.tostring(disk.to_element(), encoding="unicode")

        def detach(dom: libvirt.virDomain) -> bool:
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            live = bool(dom.isActive())
            if live:
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.detachDeviceFlags(disk_xml, flags)
            return live

        try:
            live = self._on_domain(instance, detach, "detach a volume", idempotent=False)
        except UnsupportedOperation:
            raise
        except VirtError as exc:
            raise VolumeError(f"detaching {block_device.mountpoint} from {instance.uuid} "
                              f"failed: {exc.message}") from None
        if live:
            self._wait_detached(instance, block_device, disk_xml)
        self._volumes.detached(block_device, disk)

    def _wait_detached(self, instance: Instance, block_device: BlockDevice,
                       disk_xml: str) -> None:
        volumes.wait_detached(
            instance.uuid, block_device, timeout=self._opts.detach_timeout,
            live_devices=lambda: [d.target_dev for d in self._definition(instance).disks],
            resend=lambda: self._resend_detach(instance, disk_xml))

    def _resend_detach(self, instance: Instance, disk_xml: str) -> None:
        def resend(dom: libvirt.virDomain) -> None:
            try:
                dom.detachDeviceFlags(disk_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                # "already in the process of unplug", or gone since the last look: both
                # leave the outcome to the next look at the live definition.
                LOG.debug("repeated unplug request for %s: %s", instance.uuid,
                          exc.get_error_message())

        LOG.info("guest %s has not released a detached disk yet: asking again", instance.uuid)
        self._on_domain(instance, resend, "repeat the unplug request", idempotent=False)

    # -- guest -----------------------------------------------------------------------------

    def get_console_output(self, *, instance: Instance, max_bytes: int = 64 * 1024) -> str:
        if max_bytes <= 0:
            raise InvalidRequest("max_bytes must be positive")
        path = xen.console_path(self._definition(instance), self._opts.xen_console_dir)
        if path is None:
            return ""
        return images.read_tail(path, min(max_bytes, self._opts.console_log_max_bytes))

    # -- helpers ---------------------------------------------------------------------------

    def _cache_mode(self) -> str | None:
        return None if self._domain_type() == "test" else self._disk_cachemode

    def _definition(self, instance: Instance, inactive: bool = False) -> xml.Domain:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return xml.Domain.from_xml(
            self._on_domain(instance, lambda d: d.XMLDesc(flags), "read its definition"))

    def _call(self, fn: Callable[[libvirt.virConnect], T], what: str, *,
              idempotent: bool = True) -> T:
        """Run `fn` on the connection; libvirt's errors become virtkit's (ERRORS)."""
        try:  # ERRORS.translate's work without a context manager's cost on every call
            return self._connection.call(fn, idempotent=idempotent)
        except libvirt.libvirtError as exc:
            error = ERRORS.error(exc, what)
            if error is None:
                raise
            raise error from None

    def _on_domain(self, instance: Instance, fn: Callable[[libvirt.virDomain], T], what: str,
                   *, idempotent: bool = True) -> T:
        """Run `fn` on the instance's domain (its kept handle, or one lookup by UUID)."""
        uuid = instance.uuid
        connection = self._connection

        def run(conn: libvirt.virConnect) -> T:
            dom = connection.lookup(conn, uuid)
            if dom is None or not self._owned.is_ours(dom, uuid):  # never another's domain
                raise InstanceNotFound(uuid)
            return fn(dom)

        try:
            return connection.call(run, idempotent=idempotent)
        except libvirt.libvirtError as exc:
            error = ERRORS.error(exc, what, instance=uuid)
            if isinstance(error, InstanceNotFound):
                connection.forget(uuid)
            if error is None:
                raise
            raise error from None


def _spawn_error(instance: Instance, exc: libvirt.libvirtError) -> VirtError:
    """A failed spawn's error: AccessDenied (with the fix) for a permission problem, else
    SpawnError with libvirt's words."""
    message = f"spawning {instance.name} ({instance.uuid}) failed: {exc.get_error_message()}"
    fault = classify(exc)
    if fault is not None and fault.kind is FaultKind.ACCESS_DENIED:
        error: VirtError = AccessDenied(message, hint=fault.hint)
    else:
        error = SpawnError(message)
    for note in getattr(exc, "__notes__", ()):  # what the rollback left behind
        error.add_note(note)
    return error


__all__ = ["ERRORS", "OPTS", "LibvirtDriver"]
