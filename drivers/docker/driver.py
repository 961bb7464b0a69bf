"""DockerDriver: every instance is one container, labelled as virtkit's, on one dockerd."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions
from oslo_config import cfg

from drivers.docker import guest, images, resources, spec
from drivers.docker.connection import Engine, api_error_text
from drivers.docker.containers import Containers
from drivers.docker.containers import ident as _ident
from drivers.docker.events import EventWatcher
from drivers.docker.forced import ForcedStops
from drivers.docker.options import GROUP, OPTS
from drivers.docker.volumes import DockerVolumes
from virt.driver import Capability, ComputeDriver, power, spawn_image
from virt.driver.rollback import SpawnRollback
from virt.driver.transitions import ON_STATES, LifecycleDispatcher
from virt.errors import (
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    SpawnError,
    VirtError,
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
)

LOG = logging.getLogger(__name__)

_SPAWN_LOG_LINES = 20


class DockerDriver(ComputeDriver):
    """Instances as containers of a local or remote dockerd (`[docker] base_url`)."""

    name = "docker"
    capabilities = frozenset(
        {
            Capability.PAUSE,
            Capability.SNAPSHOT,
            Capability.CONSOLE_OUTPUT,
            Capability.SET_ADMIN_PASSWORD,
            Capability.INJECT_FILE,
            Capability.LIFECYCLE_EVENTS,
        }
    )
    config_group = GROUP
    config_opts = OPTS

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        opts = conf[GROUP]
        self._engine = Engine(opts.base_url, opts.api_version, opts.call_timeout)
        self._host: str = conf.host
        self._info_cache: dict[str, Any] | None = None
        self._root_limit: bool | None = None
        self._watcher: EventWatcher | None = None
        self._dispatcher: LifecycleDispatcher[Any] | None = None
        self._lock = threading.Lock()
        self._containers = Containers(self._engine, self._host,
                                      ForcedStops(self._forced_path(self._host)))
        self._volumes = DockerVolumes(conf.instances_path)  # GlusterFS at spawn

    def _forced_path(self, host: str) -> Path | None:
        state_path = getattr(self.conf, "state_path", None)
        if not state_path:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in host)
        return Path(state_path) / "docker" / f"forced-stops-{safe}.json"

    @property
    def _opts(self) -> Any:
        return self.conf[GROUP]

    @property
    def root_disk_limit(self) -> bool:
        """Whether flavor root_gb is enforced on this daemon (see docs/docker.md)."""
        if self._root_limit is None:
            supported, reason = spec.root_disk_limit(self._info())
            self._root_limit = supported
            if not supported:
                LOG.warning("docker: flavor root_gb is not enforced: %s", reason)
        return self._root_limit

    # -- host ------------------------------------------------------------------------------

    def init_host(self, *, host: str) -> None:
        if host != self._host:
            self._containers = Containers(self._engine, host,
                                          ForcedStops(self._forced_path(host)))
        self._host = host
        self._engine.check()
        self._info(refresh=True)
        _ = self.root_disk_limit  # decide (and log) once, at start

    def cleanup_host(self, *, host: str) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
            dispatcher, self._dispatcher = self._dispatcher, None
        if watcher is not None:
            watcher.stop()
        if dispatcher is not None:
            dispatcher.stop()
        self._engine.close()

    def _info(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._info_cache is None or refresh:
            with self._engine.translate("read docker info"):
                self._info_cache = dict(self._engine.api.info())
        return self._info_cache

    def get_available_resource(self) -> HostResources:
        info = self._info(refresh=True)
        with self._engine.translate("list the containers holding resources"):
            holding = self._engine.api.containers(
                filters={"label": spec.host_filters(self._host),
                         "status": list(resources.HOLDING)}
            )
        return resources.host_resources(
            info, holding, host=self._host, base_url=self._engine.base_url,
            api_version=self._engine.api_version, root_disk_limit=self.root_disk_limit,
        )

    # -- state -----------------------------------------------------------------------------

    def list_instances(self) -> list[str]:
        return sorted(
            (entry.get("Labels") or {}).get(spec.LABEL_NAME)
            or str((entry.get("Names") or ["?"])[0]).lstrip("/")
            for entry in self._containers.list()
        )

    def list_instance_uuids(self) -> list[str]:
        return sorted((entry.get("Labels") or {})[spec.LABEL_UUID] for entry in self._containers.list())

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        data = self._containers.find(instance)  # HypervisorUnavailable if dockerd is not there
        if data is None:
            raise InstanceNotFound(_ident(instance))
        host_config = data.get("HostConfig") or {}
        memory = int(host_config.get("Memory") or 0)
        nano_cpus = int(host_config.get("NanoCpus") or 0)
        return InstanceInfo(
            state=self._containers.state(data),
            internal_id=str(data.get("Id")),
            max_mem_kb=memory // 1024 or None,
            num_cpu=math.ceil(nano_cpus / spec.NANO) or None,
        )

    def instance_exists(self, *, instance: Instance) -> bool:
        return self._containers.find(instance) is not None

    # -- spawn / destroy -------------------------------------------------------------------

    def spawn(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        power_on: bool = True,
    ) -> None:
        container_spec = self._spec(instance, vifs)
        self._volumes.validate(block_devices)  # GlusterFS only; see drivers/docker/volumes.py
        if admin_password is not None:
            guest.check_password(admin_password)
            if not power_on:
                raise InvalidRequest(
                    "an admin password needs a running container: spawn with power_on=True "
                    "or set it after power_on"
                )
        with SpawnRollback(_ident(instance)) as rollback:
            if block_devices:  # host FUSE mounts, bound into the container
                rollback.push("GlusterFS mounts", lambda: self._volumes.release(self._engine.api))
                container_spec = dataclasses.replace(
                    container_spec, binds=tuple(self._volumes.binds(block_devices)))
            container_id = self._create(instance, container_spec, rollback)
            rollback.push(f"container {container_id[:12]}", lambda: self._remove(container_id))
            if power_on:
                self._start_checked(instance, container_id)
                if admin_password is not None:
                    guest.set_password(self._engine, container_id, ident=_ident(instance),
                                       user=guest.admin_user(instance), password=admin_password)
        LOG.info("docker: spawned %s as container %s", _ident(instance), container_id[:12])

    def _spec(self, instance: Instance, vifs: Sequence[Vif]) -> spec.ContainerSpec:
        """Validate everything (the image is `instance.image`) before anything is created."""
        image = spawn_image(instance)
        name = spec.validate_container_name(instance.name)
        image_ref = spec.image_name(image)
        command = spec.image_command(image)
        mac = spec.mac_address(vifs)
        info = self._info()
        limits = spec.flavor_limits(
            instance.flavor,
            host_cpus=int(info.get("NCPU") or 1),
            root_disk_limit=self.root_disk_limit,
        )
        return spec.ContainerSpec(
            name=name,
            image=image_ref,
            labels=spec.labels(instance, self._host),
            limits=limits,
            command=command,
            mac_address=mac,
            network=self._opts.network,
            tty=self._opts.tty,
            init=self._opts.init,
        )

    def _create(self, instance: Instance, container_spec: spec.ContainerSpec,
                rollback: SpawnRollback) -> str:
        """Create the container, pulling its image first if it is missing."""
        container_id = self._try_create(instance, container_spec, rollback)
        if container_id is None:
            images.ensure_image(self._engine, container_spec.image,
                                pull=self._opts.pull_missing, pull_timeout=self._opts.pull_timeout)
            container_id = self._try_create(instance, container_spec, rollback)
            if container_id is None:
                raise ImageNotFound(f"image {container_spec.image!r} vanished during spawn")
        return container_id

    def _try_create(self, instance: Instance, container_spec: spec.ContainerSpec,
                    rollback: SpawnRollback) -> str | None:
        """The new container's id, or None if its image is missing.

        A create that fails other than by dockerd refusing it pushes the leftover check on
        `rollback`: dockerd may have made the container before the call failed (a timeout,
        a lost connection). A name taken by another container is left alone.
        """
        api = self._engine.api
        try:
            with self._engine.translate("create the container", instance=_ident(instance)):
                try:
                    return str(api.create_container(**container_spec.create_kwargs(api))["Id"])
                except docker.errors.APIError as exc:
                    if _no_such_image(exc):
                        return None
                    raise self._create_error(instance, container_spec, exc) from None
        except (InstanceExists, SpawnError):
            raise
        except BaseException:
            rollback.push("a container dockerd may have made",
                          lambda: self._remove_leftover(instance))
            raise

    def _create_error(
        self,
        instance: Instance,
        container_spec: spec.ContainerSpec,
        exc: docker.errors.APIError,
    ) -> VirtError:
        text = api_error_text(exc)
        if exc.status_code == 409:
            data = self._containers.find(instance)
            if data is not None:
                return InstanceExists(_ident(instance))
            return SpawnError(
                f"a container named {container_spec.name!r} already exists and virtkit did not "
                f"create it for {_ident(instance)}; virtkit leaves it alone",
                hint="rename the instance, or remove that container yourself",
            )
        if "storage-opt" in text.lower() or "storage opt" in text.lower():
            LOG.warning("docker: flavor root_gb is not enforced: %s", text)
            self._root_limit = False
        if exc.status_code == 400 or (exc.status_code == 500 and "invalid" in text.lower()):
            return InvalidRequest(
                f"docker refused the container of {_ident(instance)} (flavor "
                f"{instance.flavor.name!r}, image {container_spec.image!r}): {text}"
            )
        return SpawnError(f"docker could not create the container of {_ident(instance)}: {text}")

    def _start_checked(self, instance: Instance, container_id: str) -> None:
        """Start, then make sure the container did not exit at once (its output in the error).

        An inspect right after start races with the exit: dockerd may not have noticed yet
        that the process ended. So the driver asks dockerd to wait for the container to stop
        (`wait condition=not-running`), bounded by `[docker] start_check_seconds`: if it
        stops within that window the spawn fails; if the wait expires, a last inspect must
        still read it running (this also tells an expired wait from a daemon gone away).
        """
        api = self._engine.api
        window = float(self._opts.start_check_seconds)
        with self._engine.translate(f"start the container of {_ident(instance)}"):
            api.start(container_id)
            self._wait_stopped(container_id, window)
            state = api.inspect_container(container_id).get("State") or {}
        if state.get("Running") and not state.get("Restarting"):
            return
        with self._engine.translate(f"read the log of {_ident(instance)}"):
            tail = api.logs(container_id, stdout=True, stderr=True, tail=_SPAWN_LOG_LINES)
        raise SpawnError(
            f"the container of {_ident(instance)} exited right after start with code "
            f"{state.get('ExitCode')}{' (OOM killed)' if state.get('OOMKilled') else ''}; "
            f"last output: {guest.tail_text(tail, 2000).strip() or '(none)'}",
            hint="give the image a long-running command (image property os_command_line), "
            "or enable [docker] tty for shell images",
        )

    def _remove(self, container_id: str) -> None:
        """Remove a half-made container (a spawn's undo); gone already is fine."""
        with self._engine.translate("remove a half-made container"):
            try:
                self._engine.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass

    def _remove_leftover(self, instance: Instance) -> None:
        """After a failed create: remove the container if the daemon made it after all."""
        data = self._containers.find(instance)
        if data is not None:
            self._remove(str(data["Id"]))

    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        data = self._containers.find(instance)
        if data is None:
            return
        cid = str(data["Id"])
        running = self._containers.state(data) in ON_STATES
        if running:  # rm -f SIGKILLs it: a stop, not a crash, in the die event it causes
            self._containers.record_forced(data, persist=False)
        with self._engine.translate(f"remove the container of {_ident(instance)}"):
            try:
                self._engine.api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or "in progress" not in api_error_text(exc):
                    raise
        if not running or self._watcher is None:
            self._containers.forced.forget(cid)  # else the watcher forgets it at the destroy event
        self._volumes.release(self._engine.api)  # exports no container binds any more
        LOG.info("docker: destroyed %s", _ident(instance))

    # -- power -----------------------------------------------------------------------------

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        timeout = power.check_timeout(timeout)
        data = self._containers.require(instance)
        # docker's restart takes whole seconds; a soft reboot keeps at least one.
        grace = 0 if hard else math.ceil(power.reboot_grace(timeout, self._opts.reboot_timeout))
        with self._engine.translate("reboot the container", instance=_ident(instance)):
            if self._containers.state(data) is PowerState.PAUSED:
                self._engine.api.unpause(data["Id"])
            self._containers.record_forced(data)  # restart SIGKILLs after the grace
            self._engine.api.restart(data["Id"], timeout=grace)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        data = self._containers.require(instance)
        cid, ident = str(data["Id"]), _ident(instance)
        signal = (data.get("Config") or {}).get("StopSignal") or "SIGTERM"
        paused = self._containers.state(data) is PowerState.PAUSED

        def request_stop() -> None:
            nonlocal paused
            if paused:  # a frozen process cannot act on its stop signal
                self._engine.api.unpause(cid)
                paused = False
            self._signal(cid, signal)

        with self._engine.translate("power off the container", instance=ident):
            result = power.graceful_power_off(
                timeout=timeout, retry_interval=retry_interval,
                is_off=lambda: self._containers.state(data) not in ON_STATES,
                request_stop=request_stop,
                wait_off=lambda seconds: self._wait_stopped(cid, seconds),
                force_off=lambda: self._force_stop(data),
            )
        if result.forced:
            LOG.info("docker: %s ignored %s for %gs and was killed", ident, signal, timeout)
        return result

    def _force_stop(self, data: dict[str, Any]) -> bool:
        """SIGKILL the container (recorded as the driver's own stop first); False if it had
        stopped by itself meanwhile (its exit code is then its own)."""
        cid = str(data["Id"])
        self._containers.record_forced(data)
        if self._signal(cid, "SIGKILL"):
            self._wait_stopped(cid, self._engine.timeout)
            return True
        self._containers.forced.forget(cid)
        return False

    def _signal(self, cid: str, signal: str) -> bool:
        """Send `signal`; False if the container is not running any more."""
        try:
            self._engine.api.kill(cid, signal=signal)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "is not running"
                return False
            raise
        return True

    def _wait_stopped(self, cid: str, seconds: float) -> bool:
        """Wait up to `seconds` for the container to stop; True if it did."""
        if seconds <= 0:
            return False
        try:
            self._engine.api.wait(cid, timeout=seconds, condition="not-running")
            return True
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            # docker-py reports an expired wait as either; the next call tells them apart.
            return False

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        self._guarded(instance, power.should_power_on, "start")

    def pause(self, *, instance: Instance) -> None:
        self._guarded(instance, power.should_pause, "pause")

    def unpause(self, *, instance: Instance) -> None:
        self._guarded(instance, power.should_unpause, "unpause")

    def _guarded(self, instance: Instance, should: Callable[[PowerState, str], bool],
                 call: str) -> None:
        """The API call `call` ('start', 'pause' ...) on the container, unless the kit's
        guard `should` says it is a no-op in the container's state (or refuses it)."""
        data = self._containers.require(instance)
        ident = _ident(instance)
        if should(self._containers.state(data), ident):
            with self._engine.translate(f"{call} the container", instance=ident):
                getattr(self._engine.api, call)(data["Id"])

    # -- images ----------------------------------------------------------------------------

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        repository, tag = spec.parse_image_name(name)
        data = self._containers.require(instance)
        ident = _ident(instance)
        image_id = images.commit(
            self._engine, str(data["Id"]), repository, tag, ident=ident,
            instance_uuid=instance.uuid, timeout=float(self._opts.snapshot_timeout),
        )
        LOG.info("docker: snapshot of %s is %s:%s (%s)", ident, repository, tag, image_id[:19])
        return ImageRef(
            ref=f"{repository}:{tag}", disk_format="docker", properties={"image_id": image_id}
        )

    # -- guest -----------------------------------------------------------------------------

    def get_console_output(self, *, instance: Instance, max_bytes: int = 64 * 1024) -> str:
        data = self._containers.require(instance)
        with self._engine.translate("read the log", instance=_ident(instance)):
            output = self._engine.api.logs(
                data["Id"], stdout=True, stderr=True, tail=self._opts.console_tail_lines
            )
        return guest.tail_text(output, max_bytes)

    def inject_file(self, *, instance: Instance, path: str, contents: bytes) -> None:
        target = guest.validate_guest_path(path)
        if not isinstance(contents, bytes | bytearray):
            raise InvalidRequest("file contents must be bytes")
        data = self._containers.require(instance)
        ident = _ident(instance)
        api = self._engine.api
        with self._engine.translate(f"write {target}", instance=ident):
            # Write at the deepest directory that exists, creating only the missing ones,
            # so that existing directories keep their owner and mode.
            for directory in guest.ancestors(target):
                relative = target[len(directory) :].lstrip("/")
                try:
                    api.put_archive(data["Id"], directory, guest.file_archive(relative, contents))
                    return
                except docker.errors.NotFound:
                    continue
        raise InstanceNotFound(ident)

    def set_admin_password(self, *, instance: Instance, password: str) -> None:
        guest.check_password(password)
        data = self._containers.require(instance)
        if self._containers.state(data) is not PowerState.RUNNING:
            raise InstanceNotRunning(_ident(instance), "set_admin_password")
        guest.set_password(self._engine, str(data["Id"]), ident=_ident(instance),
                           user=guest.admin_user(instance), password=password)

    # -- events ----------------------------------------------------------------------------

    def register_event_listener(self, listener: Listener) -> None:
        super().register_event_listener(listener)
        self._start_watcher()

    def _start_watcher(self) -> None:
        with self._lock:
            if self._watcher is None:
                # A reboot (die, then start) is not a shutdown: the dispatcher holds STOPPED.
                self._dispatcher = LifecycleDispatcher(
                    self.emit_event, stopped_delay=self._opts.stopped_event_delay, name="docker")
                self._watcher = EventWatcher(
                    self._engine,
                    host=self._host,
                    list_states=self._containers.states,
                    emit=self._dispatcher.push,
                    window=self._opts.event_window,
                    resync_interval=self._opts.resync_interval,
                    exit_state=self._containers.exit_state,
                    removed=lambda cid: self._containers.forced.forget(cid),
                )
                self._watcher.start()

    @property
    def event_watcher(self) -> EventWatcher | None:
        return self._watcher


def _no_such_image(exc: docker.errors.APIError) -> bool:
    return exc.status_code == 404 and "no such image" in api_error_text(exc).lower()
