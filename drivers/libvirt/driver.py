"""The libvirt compute driver: KVM/QEMU guests (and libvirt's test driver) behind ComputeDriver."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import libvirt
from oslo_config import cfg

from drivers.libvirt import designer, images, lifecycle, xml
from drivers.libvirt.host import Host
from drivers.libvirt.volumes import IscsiNativeVolumes, PreparedVolume
from drivers.libvirt.volumes_host import IscsiHostVolumes
from virt.driver import Capability, ComputeDriver
from virt.errors import (
    HypervisorUnavailable,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
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

OPTS: list[cfg.Opt] = [
    cfg.StrOpt("connection_uri", default="qemu:///system",
               help="libvirt URI: qemu:///system, qemu+ssh://host/system, or test:///default "
               "(libvirt's embedded test driver)."),
    cfg.StrOpt("virt_type", default="auto", choices=["auto", "kvm", "qemu"],
               help="Domain type. 'auto' uses KVM when a bounded boot probe shows it runs "
               "guests, else QEMU software emulation (TCG). Ignored for test:// URIs."),
    cfg.StrOpt("images_path", default="$state_path/images",
               help="Base-image cache: each base image is copied here once; instance root "
               "disks are qcow2 overlays on it."),
    cfg.StrOpt("iscsi_attach", default="native", choices=["native", "host"],
               help="How iSCSI volumes are attached: 'native' (QEMU's own initiator, CHAP in "
               "a libvirt secret) or 'host' (kernel initiator through os-brick)."),
    cfg.StrOpt("disk_cachemode", default="none",
               choices=["none", "writethrough", "writeback", "directsync", "unsafe"],
               help="QEMU cache mode of instance disks and volumes."),
    cfg.IntOpt("console_log_max_bytes", default=1024 * 1024, min=1024,
               help="Upper bound on what get_console_output returns (the tail of the log)."),
    cfg.FloatOpt("stopped_event_delay", default=15.0, min=0,
                 help="Seconds a STOPPED event is held back; a start within it cancels both "
                 "(a reboot is not a shutdown)."),
    cfg.FloatOpt("volume_probe_timeout", default=10.0, min=0.5,
                 help="Bound on probing an iSCSI portal and logging in before an attach."),
    cfg.FloatOpt("detach_timeout", default=30.0, min=1,
                 help="Seconds to wait for a guest to release a hot-detached volume."),
    cfg.FloatOpt("connect_timeout", default=30.0, min=1,
                 help="Bound on opening the libvirt connection."),
    cfg.IntOpt("keepalive_interval", default=5, min=1,
               help="Seconds between keepalive probes on remote connections; a dead libvirtd "
               "is detected after interval x (count + 1) seconds."),
    cfg.IntOpt("keepalive_count", default=3, min=1, help="Unanswered keepalives before the "
               "connection counts as lost."),
]

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
# Dropped one at a time, in this order, when libvirt refuses a flag (test driver, old libvirt).
_UNDEFINE_FALLBACK = (
    libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
)
# Seconds between repeated hot-unplug requests while a guest has not released a disk.
DETACH_RESEND_INTERVAL = 2.0


@functools.lru_cache(maxsize=1)
def _kvm_runs_guests() -> bool:
    from drivers.libvirt import kvm_probe

    return kvm_probe.kvm_runs_guests()


def _code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


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
    })
    config_group = "libvirt"
    config_opts = OPTS

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        opts = conf.libvirt
        self._opts = opts
        self._instances_path = conf.instances_path
        self._cache = images.ImageCache(opts.images_path)
        self._dispatcher = lifecycle.EventDispatcher(self.emit_event, opts.stopped_event_delay,
                                                     observe=self._observe_event)
        self._host = Host(
            opts.connection_uri,
            on_lifecycle=self._dispatcher.push,
            keepalive_interval=opts.keepalive_interval,
            keepalive_count=opts.keepalive_count,
            connect_timeout=opts.connect_timeout,
        )
        # host mode: os-brick and the kernel initiator (os-brick imported only when used).
        self._host_volumes = IscsiHostVolumes(
            probe_timeout=opts.volume_probe_timeout,
            lock_path=os.path.join(conf.state_path, "os-brick-locks"),
        ) if opts.iscsi_attach == "host" else None
        self._volumes: IscsiNativeVolumes | IscsiHostVolumes = self._host_volumes or \
            IscsiNativeVolumes(self._host, probe_timeout=opts.volume_probe_timeout)
        self._undefine_flags = _UNDEFINE_FLAGS
        self._virt_type: str | None = None
        self._iscsi_mode = opts.iscsi_attach  # options are read once (each read costs ~4 us)
        self._disk_cachemode = opts.disk_cachemode
        # Domains this driver defined without a CHAP secret and attached no volume to since:
        # their destroy need not read the definition back to find secrets to remove. Any
        # other domain (e.g. after a restart of this process) has its definition read.
        self._secret_free: set[str] = set()

    @property
    def host(self) -> Host:
        return self._host

    def _observe_event(self, conn: libvirt.virConnect, uuid: str, dom: libvirt.virDomain,
                       event: int) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:  # whoever undefined it: forget it
            self._secret_free.discard(uuid)
        self._host.observe(conn, uuid, dom, event)

    def register_event_listener(self, listener: Listener) -> None:
        super().register_event_listener(listener)
        self._host.watch_lifecycle()  # libvirt's events are paid for only once listened to

    # -- host ------------------------------------------------------------------------------

    def init_host(self, *, host: str) -> None:
        self._check_iscsi_mode()
        os.makedirs(self._instances_path, mode=0o711, exist_ok=True)
        os.makedirs(self._opts.images_path, mode=0o711, exist_ok=True)
        self._host.connection()
        self._domain_type()

    def cleanup_host(self, *, host: str) -> None:
        self._host.close()
        self._dispatcher.stop()

    def _check_iscsi_mode(self) -> None:
        """Host mode: ConfigError naming what is missing (os-brick, iscsiadm, iscsi_tcp)."""
        if self._host_volumes is not None:
            self._host_volumes.check()

    def _check_volumes(self, operation: str) -> None:
        """UnsupportedOperation, before any probe or secret, where volumes cannot attach."""
        self._check_iscsi_mode()
        if self._engine_type == "TEST":
            raise UnsupportedOperation(self.name, operation, reason=(
                "libvirt's test driver cannot attach devices or hold secrets"))

    @functools.cached_property
    def _engine_type(self) -> str:
        """libvirt's driver behind the URI ("QEMU", "TEST"): the same after a reconnect."""
        return self._call(lambda c: str(c.getType()), "read the connection's type")

    def _domain_type(self) -> str:
        """The domain type this driver defines: test, kvm or qemu (auto: probed once)."""
        if self._virt_type is None:
            uri = self._opts.connection_uri
            if uri.startswith("test:"):
                self._virt_type = "test"
            elif self._opts.virt_type != "auto":
                self._virt_type = self._opts.virt_type
            elif "://" in uri and uri.split("://", 1)[1].split("/", 1)[0]:
                self._virt_type = self._remote_virt_type()
            else:
                self._virt_type = "kvm" if _kvm_runs_guests() else "qemu"
            LOG.info("libvirt driver uses domain type %s on %s", self._virt_type, uri)
        return self._virt_type

    def _remote_virt_type(self) -> str:
        # A remote host cannot be probed from here: trust its domain capabilities.
        try:
            self._host.call(lambda c: c.getDomainCapabilities(None, None, None, "kvm", 0))
            return "kvm"
        except libvirt.libvirtError:
            return "qemu"

    def get_available_resource(self) -> HostResources:
        def collect(conn: libvirt.virConnect) -> HostResources:
            model, memory_mb, cpus, _mhz, _nodes, sockets, cores, threads = conn.getInfo()
            vcpus_used = 0
            mem_used = 0
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                _state, max_kb, _mem, ncpu, _cpu = dom.info()
                vcpus_used += ncpu
                mem_used += max_kb // 1024
            try:
                stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
                free = stats["free"] + stats.get("buffers", 0) + stats.get("cached", 0)
                mem_used = (stats["total"] - free) // 1024
            except (libvirt.libvirtError, KeyError):
                pass  # the test driver has no node memory stats: count guest memory instead
            disk = shutil.disk_usage(self._instances_path)
            gib = 1024**3
            return HostResources(
                vcpus=cpus, memory_mb=memory_mb, local_gb=disk.total // gib,
                vcpus_used=vcpus_used, memory_mb_used=mem_used,
                local_gb_used=(disk.total - disk.free) // gib,
                hypervisor_type=conn.getType(), hypervisor_version=conn.getVersion(),
                hypervisor_hostname=conn.getHostname(),
                cpu_info=json.dumps({"arch": model, "topology": {
                    "sockets": sockets, "cores": cores, "threads": threads}}),
                disk_available_least=disk.free // gib,
                supported_instances=((model, self._domain_type(), "hvm"),),
            )

        os.makedirs(self._instances_path, mode=0o711, exist_ok=True)
        return self._call(collect, "read the host's resources")

    def get_volume_connector(self, *, instance: Instance | None = None) -> VolumeConnector:
        return VolumeConnector(host=self.conf.host, ip=_local_ip(),
                               initiator=self._volumes.initiator, multipath=False)

    # -- state -----------------------------------------------------------------------------

    def list_instances(self) -> list[str]:
        return self._call(lambda c: [d.name() for d in c.listAllDomains(0)], "list domains")

    def list_instance_uuids(self) -> list[str]:
        return self._call(lambda c: [d.UUIDString() for d in c.listAllDomains(0)], "list domains")

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        """The instance's state; UNKNOWN (not an error) while libvirtd is unreachable."""
        try:
            return self._on_domain(instance, self._info, "read its state")
        except HypervisorUnavailable as exc:
            LOG.debug("state of %s unknown: %s", instance.uuid, exc.message)
            return InstanceInfo(state=PowerState.UNKNOWN)

    def _info(self, dom: libvirt.virDomain) -> InstanceInfo:
        state, max_kb, mem_kb, ncpu, cpu_ns = dom.info()
        dom_id = dom.ID()
        if (dom_id < 0) != (state == libvirt.VIR_DOMAIN_SHUTOFF) and \
                state != libvirt.VIR_DOMAIN_CRASHED:
            # A kept handle from before the domain was started or stopped elsewhere (its
            # event not yet seen) carries an old ID: look the domain up again for it.
            fresh = self._host.lookup(dom.connect(), dom.UUIDString(), fresh=True)
            dom_id = fresh.ID() if fresh is not None else -1
        saved = state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0) == 1
        return InstanceInfo(state=lifecycle.power_state(state, saved), internal_id=str(dom_id),
                            max_mem_kb=max_kb, mem_kb=mem_kb, num_cpu=ncpu, cpu_time_ns=cpu_ns)

    def instance_exists(self, *, instance: Instance) -> bool:
        return self._call(lambda c: self._host.lookup(c, instance.uuid, fresh=True) is not None,
                          "look up a domain")

    def instance_disk_path(self, *, instance: Instance) -> str:
        """Where spawn keeps (or would make) the instance's root disk on this host; recovery
        checks it is there (shared storage) before spawning."""
        return images.root_disk_path(self._instances_path, instance.uuid)

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(
        self,
        *,
        instance: Instance,
        image: ImageRef,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        power_on: bool = True,
    ) -> None:
        self._check_iscsi_mode()
        for bdm in block_devices:  # bad connection_info fails before anything is made
            self._volumes.validate(bdm)
        if block_devices:
            self._check_volumes("attach_volume")
        # Needed: defineXML of a domain with the same uuid and name redefines it instead of
        # failing, and the check comes before any file is made for the instance.
        if self.instance_exists(instance=instance):
            raise InstanceExists(instance.uuid)
        virt_type = self._domain_type()
        cache_mode = self._cache_mode()
        disks = images.create_instance_disks(self._cache, self._instances_path, instance.uuid,
                                             image, instance.flavor)
        prepared: list[PreparedVolume] = []
        defined = False
        try:
            for bdm in block_devices:
                prepared.append(self._volumes.prepare(instance, bdm, cache=cache_mode))
            domain_xml = designer.domain_xml(
                instance=instance, image=image, virt_type=virt_type, disks=disks,
                volume_disks=[p.disk for p in prepared], vifs=vifs, cache_mode=cache_mode)
            secret_free = not any(p.secret_usage for p in prepared)

            def define(conn: libvirt.virConnect) -> None:
                nonlocal defined
                dom = conn.defineXML(domain_xml)
                defined = True
                if secret_free:
                    self._secret_free.add(instance.uuid)
                self._host.remember(conn, instance.uuid, dom)
                if power_on:
                    dom.createWithFlags(0)

            self._host.call(define, idempotent=False)
        except BaseException as exc:
            self._rollback_spawn(instance, disks, prepared, defined)
            if isinstance(exc, libvirt.libvirtError):
                raise SpawnError(f"spawning {instance.name} ({instance.uuid}) failed: "
                                 f"{exc.get_error_message()}") from None
            raise
        LOG.info("spawned %s (%s)%s", instance.name, instance.uuid,
                 "" if power_on else " without starting it")

    def _rollback_spawn(self, instance: Instance, disks: images.InstanceDisks,
                        prepared: list[PreparedVolume], defined: bool) -> None:
        if defined:
            try:
                self._host.call(lambda c: self._remove_domain(c, instance.uuid))
            except (libvirt.libvirtError, VirtError) as exc:
                LOG.error("rollback of %s: cannot remove the domain: %s", instance.uuid, exc)
        if self._host_volumes is not None:  # log the host out of what spawn connected
            self._host_volumes.release([p.disk for p in prepared])
        for volume in prepared:
            if volume.secret_usage:
                try:
                    self._volumes.remove_secret(volume.secret_usage)
                except (libvirt.libvirtError, VirtError) as exc:
                    LOG.error("rollback of %s: cannot remove secret %s: %s", instance.uuid,
                              volume.secret_usage, exc)
        images.remove_created(disks)  # never disks that were there before this spawn

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
        if removed and "<secret" in removed:  # parse only when there is one
            self._volumes.release(xml.Domain.from_xml(removed).disks)
        if block_devices:
            self._volumes.remove_instance_secrets(instance.uuid)
            if self._host_volumes is not None:  # after the domain let go of the devices
                self._host_volumes.disconnect(block_devices, force=True, raise_errors=False)
        if destroy_disks:
            images.remove_instance_dir(images.instance_dir(self._instances_path, instance.uuid))

    def _remove_domain(self, conn: libvirt.virConnect, uuid: str, *,
                       read_definition: bool = True) -> str | None:
        """Stop and undefine the domain; its last XML ("" unless `read_definition`), or
        None if there was none."""
        dom = self._host.lookup(conn, uuid)
        if dom is None:
            self._secret_free.discard(uuid)
            return None
        try:
            definition: str = dom.XMLDesc(0) if read_definition else ""
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # not running
                    raise
            self._undefine(dom)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            self._secret_free.discard(uuid)
            return None  # gone meanwhile (or a kept handle outlived it): nothing to remove
        finally:
            self._host.forget(uuid)
        self._secret_free.discard(uuid)
        return definition

    def _undefine(self, dom: libvirt.virDomain) -> None:
        flags = self._undefine_flags
        for drop in (0, *_UNDEFINE_FALLBACK):
            flags &= ~drop
            try:
                dom.undefineFlags(flags)
                self._undefine_flags = flags  # remember what this libvirt accepts
                return
            except libvirt.libvirtError as exc:
                if _code(exc) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                    raise
                LOG.info("libvirt refused undefine flags %#x (%s); retrying without %#x",
                         flags, exc.get_error_message(), drop)
        dom.undefine()

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        if not hard:
            state = self.get_info(instance=instance).state
            if state is not PowerState.RUNNING:
                raise InstanceNotRunning(instance.uuid, "a soft reboot")
            if self._shutdown_and_wait(instance, timeout, retry_interval=timeout):
                self._on_domain(instance, lambda d: d.createWithFlags(0), "start it",
                                idempotent=False)
                return
            LOG.warning("%s did not shut down within %ss: rebooting it hard", instance.uuid, timeout)

        def hard_reboot(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                dom.destroy()
            dom.createWithFlags(0)

        self._on_domain(instance, hard_reboot, "reboot it", idempotent=False)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        if timeout < 0 or retry_interval < 0:
            raise InvalidRequest("power_off timeout and retry_interval must not be negative")
        began = time.monotonic()
        if not self._on_domain(instance, lambda d: d.isActive() == 1, "read its state"):
            return PowerOffResult(clean=True, forced=False, duration_s=0.0, already_off=True)
        if timeout > 0 and self._shutdown_and_wait(instance, timeout, retry_interval):
            return PowerOffResult(clean=True, forced=False, duration_s=time.monotonic() - began)

        def force(dom: libvirt.virDomain) -> None:
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise

        self._on_domain(instance, force, "force it off")
        return PowerOffResult(clean=False, forced=True, duration_s=time.monotonic() - began)

    def _shutdown_and_wait(self, instance: Instance, timeout: float, retry_interval: float) -> bool:
        """ACPI shutdown, re-sent every `retry_interval`; True if it stopped within `timeout`."""
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                try:
                    self._on_domain(instance, lambda d: d.shutdown(), "shut it down")
                except InvalidState:
                    pass
                next_send = time.monotonic() + max(retry_interval, 0.5)
            if not self._on_domain(instance, lambda d: d.isActive() == 1, "read its state"):
                return True
            time.sleep(0.1)
        return False

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        def start(dom: libvirt.virDomain) -> None:
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                raise InvalidState(f"instance {instance.uuid} is paused", hint="unpause it instead")
            if not dom.isActive():
                dom.createWithFlags(0)

        self._on_domain(instance, start, "start it", idempotent=False)

    def pause(self, *, instance: Instance) -> None:
        def pause(dom: libvirt.virDomain) -> None:
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                return
            if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
                raise InvalidState(f"instance {instance.uuid} is not running; cannot pause it")
            dom.suspend()

        self._on_domain(instance, pause, "pause it")

    def unpause(self, *, instance: Instance) -> None:
        def unpause(dom: libvirt.virDomain) -> None:
            state = dom.state()[0]
            if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
                return
            if state != libvirt.VIR_DOMAIN_PAUSED:
                raise InvalidState(f"instance {instance.uuid} is not paused; cannot unpause it")
            dom.resume()

        self._on_domain(instance, unpause, "unpause it")

    def suspend(self, *, instance: Instance) -> None:
        def suspend(dom: libvirt.virDomain) -> None:
            if not dom.isActive():
                raise InvalidState(f"instance {instance.uuid} is not running; cannot suspend it")
            dom.managedSave(0)

        self._on_domain(instance, suspend, "suspend it", idempotent=False)

    def resume(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        def resume(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                return
            if dom.hasManagedSaveImage(0) != 1:
                raise InvalidState(f"instance {instance.uuid} is not suspended; cannot resume it")
            dom.createWithFlags(0)

        self._on_domain(instance, resume, "resume it", idempotent=False)

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        definition = self._definition(instance)
        root = next((d for d in definition.disks if d.target_dev == "vda"), None)
        if root is None or not root.source_path:
            raise InvalidState(f"instance {instance.uuid} has no local root disk to snapshot")
        # A running guest is saved first, so the overlay is consistent, then restored.
        was_active = self._on_domain(instance, lambda d: d.isActive() == 1, "read its state")
        if was_active:
            self._on_domain(instance, lambda d: d.managedSave(0), "save it", idempotent=False)
        try:
            ref = images.snapshot_disk(root.source_path, self._opts.images_path, name)
        finally:
            if was_active:
                self._on_domain(instance, lambda d: d.createWithFlags(0), "restore it",
                                idempotent=False)
        return self._snapshot_ref(ref, definition, name)

    def _snapshot_ref(self, ref: ImageRef, definition: xml.Domain, name: str) -> ImageRef:
        kernel = ramdisk = None
        target_dir = os.path.dirname(ref.ref)
        if definition.os.kernel:
            kernel = os.path.join(target_dir, f"{name}.kernel")
            shutil.copyfile(definition.os.kernel, kernel)
        if definition.os.initrd:
            ramdisk = os.path.join(target_dir, f"{name}.ramdisk")
            shutil.copyfile(definition.os.initrd, ramdisk)
        return ImageRef(ref=ref.ref, disk_format="qcow2", kernel=kernel, ramdisk=ramdisk,
                        kernel_cmdline=definition.os.cmdline)

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
        if self._host_volumes is not None:
            self._host_volumes.disconnect([block_device])  # by connection_info: after a restart too
        else:
            self._volumes.release([disk])

    def _wait_detached(self, instance: Instance, block_device: BlockDevice,
                       disk_xml: str) -> None:
        """Wait until the guest releases the disk, repeating the unplug request meanwhile.

        A guest that is still booting drops the hot-unplug request (ACPI) and never answers
        it; QEMU accepts the request again and a booted guest then releases at once.
        """
        started = time.monotonic()
        deadline = started + self._opts.detach_timeout
        resend_at = started + DETACH_RESEND_INTERVAL
        while time.monotonic() < deadline:
            live = self._definition(instance)
            if all(d.target_dev != block_device.device_name for d in live.disks):
                return
            if time.monotonic() >= resend_at:
                self._resend_detach(instance, disk_xml)
                resend_at = time.monotonic() + DETACH_RESEND_INTERVAL
            time.sleep(0.2)
        raise VolumeError(f"the guest {instance.uuid} did not release {block_device.mountpoint} "
                          f"within {self._opts.detach_timeout:g}s",
                          hint="it is removed from the configuration; retry or power off")

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
        definition = self._definition(instance)
        if not definition.serials:
            return ""
        limit = min(max_bytes, self._opts.console_log_max_bytes)
        try:
            with open(definition.serials[0].path, "rb") as log:
                size = os.fstat(log.fileno()).st_size
                log.seek(max(0, size - limit))
                return log.read(limit).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""  # never started: no output yet

    # -- helpers ---------------------------------------------------------------------------

    def _cache_mode(self) -> str | None:
        return None if self._domain_type() == "test" else self._disk_cachemode

    def _definition(self, instance: Instance, inactive: bool = False) -> xml.Domain:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return xml.Domain.from_xml(
            self._on_domain(instance, lambda d: d.XMLDesc(flags), "read its definition"))

    def _call(self, fn: Callable[[libvirt.virConnect], T], what: str, *,
              idempotent: bool = True) -> T:
        try:
            return self._host.call(fn, idempotent=idempotent)
        except libvirt.libvirtError as exc:
            raise _engine_error(exc, what) from None

    def _on_domain(self, instance: Instance, fn: Callable[[libvirt.virDomain], T], what: str,
                   *, idempotent: bool = True) -> T:
        """Run `fn` on the instance's domain (its kept handle, or one lookup by UUID)."""
        uuid = instance.uuid
        host = self._host

        def run(conn: libvirt.virConnect) -> T:
            dom = host.lookup(conn, uuid)
            if dom is None:
                raise InstanceNotFound(uuid)
            return fn(dom)

        try:
            return host.call(run, idempotent=idempotent)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                host.forget(uuid)
                raise InstanceNotFound(uuid) from None
            raise _engine_error(exc, f"{what} ({uuid})") from None


def _engine_error(exc: libvirt.libvirtError, what: str) -> VirtError:
    message = f"libvirt could not {what}: {exc.get_error_message()}"
    if _code(exc) == libvirt.VIR_ERR_OPERATION_INVALID:
        return InvalidState(message)
    if _code(exc) == libvirt.VIR_ERR_NO_SUPPORT:
        return UnsupportedOperation("libvirt", what, reason=exc.get_error_message())
    return VirtError(message)


def _local_ip() -> str:
    """The address this host uses to reach others (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"


__all__ = ["OPTS", "LibvirtDriver"]
