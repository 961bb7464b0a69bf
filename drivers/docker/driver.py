"""DockerDriver: every instance is one container, labelled as virtkit's, on one dockerd."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker.errors
import requests.exceptions
from oslo_config import cfg

from drivers.docker import guest, images, spec, states
from drivers.docker.connection import Engine, api_error_text
from drivers.docker.events import EventWatcher
from drivers.docker.forced import ForcedStops
from drivers.docker.options import GROUP, OPTS
from virt.driver import Capability, ComputeDriver
from virt.errors import (
    HypervisorUnavailable,
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    SpawnError,
    UnsupportedOperation,
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
#: Container states that hold the flavor's resources (docker ORs the status filter's values).
_HOLDING = ("running", "paused", "restarting")


def _ident(instance: Instance) -> str:
    return f"{instance.name} ({instance.uuid})"


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
        self._lock = threading.Lock()
        self._forced = ForcedStops(self._forced_path(self._host))

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
            self._forced = ForcedStops(self._forced_path(host))
        self._host = host
        self._engine.check()
        self._info(refresh=True)
        _ = self.root_disk_limit  # decide (and log) once, at start

    def cleanup_host(self, *, host: str) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        self._engine.close()

    def _info(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._info_cache is None or refresh:
            with self._engine.translate("read docker info"):
                self._info_cache = dict(self._engine.api.info())
        return self._info_cache

    def get_available_resource(self) -> HostResources:
        info = self._info(refresh=True)
        with self._engine.translate("list the containers holding resources"):
            # A paused or restarting container keeps its memory: it counts as used.
            holding = self._engine.api.containers(
                filters={"label": spec.host_filters(self._host), "status": list(_HOLDING)}
            )
        vcpus_used = memory_used = 0
        for entry in holding:
            labels = entry.get("Labels") or {}
            vcpus_used += int(labels.get(spec.LABEL_VCPUS, 0) or 0)
            memory_used += int(labels.get(spec.LABEL_MEMORY_MB, 0) or 0)
        total_gb, free_gb = self._root_disk_space(str(info.get("DockerRootDir", "")))
        arch = _arch(str(info.get("Architecture") or platform.machine()))
        cpu_info = {
            "arch": arch,
            "ncpu": info.get("NCPU"),
            "docker_version": info.get("ServerVersion"),
            "api_version": self._engine.api_version,
            "storage_driver": info.get("Driver"),
            "root_disk_limit": self.root_disk_limit,
            "swap_limit": bool(info.get("SwapLimit")),
        }
        return HostResources(
            vcpus=int(info.get("NCPU") or 0),
            memory_mb=int(info.get("MemTotal") or 0) // spec.MIB,
            local_gb=total_gb,
            vcpus_used=vcpus_used,
            memory_mb_used=memory_used,
            local_gb_used=max(total_gb - free_gb, 0),
            hypervisor_type="docker",
            hypervisor_version=_version_number(str(info.get("ServerVersion") or "")),
            hypervisor_hostname=str(info.get("Name") or self._host),
            cpu_info=json.dumps(cpu_info, sort_keys=True),
            disk_available_least=free_gb,
            supported_instances=((arch, "docker", "exe"),),
        )

    def _root_disk_space(self, root_dir: str) -> tuple[int, int]:
        """(total, free) GB of the daemon's data directory, when it is on this machine."""
        if urlparse(self._engine.base_url).scheme not in ("unix", "") or not root_dir:
            return 0, 0
        try:
            stat = os.statvfs(root_dir)
        except OSError:
            return 0, 0
        gib = 1024**3
        return stat.f_blocks * stat.f_frsize // gib, stat.f_bavail * stat.f_frsize // gib

    # -- state -----------------------------------------------------------------------------

    def _list(self) -> list[dict[str, Any]]:
        with self._engine.translate("list containers"):
            entries: list[dict[str, Any]] = self._engine.api.containers(
                all=True, filters={"label": spec.host_filters(self._host)}
            )
        return entries

    def list_instances(self) -> list[str]:
        return sorted(
            (entry.get("Labels") or {}).get(spec.LABEL_NAME)
            or str((entry.get("Names") or ["?"])[0]).lstrip("/")
            for entry in self._list()
        )

    def list_instance_uuids(self) -> list[str]:
        return sorted((entry.get("Labels") or {})[spec.LABEL_UUID] for entry in self._list())

    def _states(self) -> dict[str, PowerState]:
        """uuid -> PowerState of every container of this host (the watcher's resync).

        Running, paused and created containers read from the list; an exited or dead one is
        inspected, so that its state is the one get_info reports (OOMKilled, exit code,
        the driver's own forced stops).
        """
        result: dict[str, PowerState] = {}
        for entry in self._list():
            uuid = (entry.get("Labels") or {})[spec.LABEL_UUID]
            if not states.needs_inspect(str(entry.get("State", ""))):
                result[uuid] = states.from_list_entry(entry)
                continue
            with self._engine.translate("inspect a stopped container"):
                try:
                    data = self._engine.api.inspect_container(entry["Id"])
                except docker.errors.NotFound:
                    continue  # removed since the list call: it is gone
            result[uuid] = self._state(data)
        return result

    def _exit_state(self, container_id: str, exit_code: int, oom: bool) -> PowerState:
        """The state of a container after a `die` event (the event watcher asks).

        Inspected, like get_info, while it stays stopped; a container already removed or
        started again is read from the event (exit code, OOM event, forced-stop record).
        """
        with self._engine.translate("inspect a container that died"):
            try:
                data = self._engine.api.inspect_container(container_id)
            except docker.errors.NotFound:
                data = None
        if data is not None and states.needs_inspect(str((data.get("State") or {}).get("Status"))):
            return self._state(data)
        return states.exit_state(exit_code, oom, forced=self._forced.has(container_id))

    def _is_ours(self, data: dict[str, Any] | None, instance: Instance) -> bool:
        labels = ((data or {}).get("Config") or {}).get("Labels") or {}
        return (
            labels.get(spec.LABEL_MANAGED) == "1"
            and labels.get(spec.LABEL_HOST) == self._host
            and labels.get(spec.LABEL_UUID) == instance.uuid
        )

    def _find(self, instance: Instance) -> dict[str, Any] | None:
        """`docker inspect` of the instance's container, or None; never a foreign container."""
        api = self._engine.api
        with self._engine.translate(f"look up the container of {_ident(instance)}"):
            try:
                data: dict[str, Any] | None = api.inspect_container(instance.name)
            except docker.errors.NotFound:
                data = None
            if self._is_ours(data, instance):
                return data
            # Not under its name (renamed, or the name is someone else's): ask by label.
            entries = api.containers(
                all=True,
                filters={
                    "label": [*spec.host_filters(self._host), f"{spec.LABEL_UUID}={instance.uuid}"]
                },
            )
            for entry in entries:
                try:
                    data = api.inspect_container(entry["Id"])
                except docker.errors.NotFound:
                    continue
                if self._is_ours(data, instance):
                    return data
        return None

    def _require(self, instance: Instance) -> dict[str, Any]:
        data = self._find(instance)
        if data is None:
            raise InstanceNotFound(_ident(instance))
        return data

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        try:
            data = self._find(instance)
        except HypervisorUnavailable as exc:
            LOG.warning("docker: state of %s unknown: %s", _ident(instance), exc)
            return InstanceInfo(state=PowerState.UNKNOWN)
        if data is None:
            raise InstanceNotFound(_ident(instance))
        host_config = data.get("HostConfig") or {}
        memory = int(host_config.get("Memory") or 0)
        nano_cpus = int(host_config.get("NanoCpus") or 0)
        return InstanceInfo(
            state=self._state(data),
            internal_id=str(data.get("Id")),
            max_mem_kb=memory // 1024 or None,
            num_cpu=math.ceil(nano_cpus / spec.NANO) or None,
        )

    def instance_exists(self, *, instance: Instance) -> bool:
        return self._find(instance) is not None

    # -- spawn / destroy -------------------------------------------------------------------

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
        container_spec = self._spec(instance, image, vifs)
        if block_devices:
            raise UnsupportedOperation(
                self.name, "spawn with block devices", reason="volumes cannot be attached"
            )
        if admin_password is not None:
            _check_password(admin_password)
            if not power_on:
                raise InvalidRequest(
                    "an admin password needs a running container: spawn with power_on=True "
                    "or set it after power_on"
                )
        container_id = self._create(instance, container_spec)
        try:
            if power_on:
                self._start_checked(instance, container_id)
                if admin_password is not None:
                    self._set_password(instance, container_id, admin_password)
        except BaseException:
            self._remove_quietly(container_id)
            raise
        LOG.info("docker: spawned %s as container %s", _ident(instance), container_id[:12])

    def _spec(self, instance: Instance, image: ImageRef, vifs: Sequence[Vif]) -> spec.ContainerSpec:
        """Validate everything before anything is created."""
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

    def _create(self, instance: Instance, container_spec: spec.ContainerSpec) -> str:
        """Create the container (pulling a missing image first); roll back on any failure."""
        api = self._engine.api
        pulled = False
        while True:
            try:
                with self._engine.translate(f"create the container of {_ident(instance)}"):
                    try:
                        created = api.create_container(**container_spec.create_kwargs(api))
                        return str(created["Id"])
                    except docker.errors.APIError as exc:
                        text = api_error_text(exc)
                        if exc.status_code == 404 and "no such image" in text.lower():
                            if pulled:
                                raise ImageNotFound(
                                    f"image {container_spec.image!r} vanished during spawn"
                                ) from None
                            pulled = True
                            images.ensure_image(
                                self._engine,
                                container_spec.image,
                                pull=self._opts.pull_missing,
                                pull_timeout=self._opts.pull_timeout,
                            )
                            continue
                        raise self._create_error(instance, container_spec, exc, text) from None
            except (InstanceExists, SpawnError):
                raise  # the name belongs to another container: it is not ours to remove
            except BaseException:
                self._remove_leftover(instance)
                raise

    def _create_error(
        self,
        instance: Instance,
        container_spec: spec.ContainerSpec,
        exc: docker.errors.APIError,
        text: str,
    ) -> VirtError:
        if exc.status_code == 409:
            data = self._find(instance)
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

    def _remove_quietly(self, container_id: str) -> None:
        try:
            with self._engine.translate("remove a half-made container"):
                self._engine.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except VirtError as exc:
            LOG.error("docker: could not remove half-made container %s: %s", container_id, exc)

    def _remove_leftover(self, instance: Instance) -> None:
        """After a failed create: remove the container if the daemon made it after all."""
        try:
            data = self._find(instance)
        except VirtError:
            return
        if data is not None:
            self._remove_quietly(str(data["Id"]))

    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        data = self._find(instance)
        if data is None:
            return
        cid = str(data["Id"])
        running = self._state(data) in states.ON_STATES
        if running:  # rm -f SIGKILLs it: a stop, not a crash, in the die event it causes
            self._record_forced(data, persist=False)
        with self._engine.translate(f"remove the container of {_ident(instance)}"):
            try:
                self._engine.api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or "in progress" not in api_error_text(exc):
                    raise
        if not running or self._watcher is None:
            self._forced.forget(cid)  # else the watcher forgets it at the destroy event
        LOG.info("docker: destroyed %s", _ident(instance))

    # -- power -----------------------------------------------------------------------------

    def _state(self, data: dict[str, Any]) -> PowerState:
        """PowerState from `docker inspect`, with the record of the driver's forced stops."""
        state = data.get("State") or {}
        forced = self._forced.matches(str(data.get("Id")), str(state.get("StartedAt") or ""))
        return states.from_inspect(state, forced=forced)

    def _record_forced(self, data: dict[str, Any], *, persist: bool = True) -> None:
        """Before the driver SIGKILLs (or may SIGKILL) the current run of a container."""
        started_at = str((data.get("State") or {}).get("StartedAt") or "")
        self._forced.record(str(data["Id"]), started_at, persist=persist)

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        data = self._require(instance)
        api = self._engine.api
        grace = 0 if hard else max(0, int(min(timeout, self._opts.stop_timeout)))
        with self._engine.translate(f"reboot {_ident(instance)}", instance=_ident(instance)):
            if self._state(data) is PowerState.PAUSED:
                api.unpause(data["Id"])
            self._record_forced(data)  # restart SIGKILLs after the grace
            api.restart(data["Id"], timeout=grace)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        data = self._require(instance)
        started = time.monotonic()
        state = self._state(data)
        if state not in states.ON_STATES:
            return PowerOffResult(clean=True, forced=False, duration_s=0.0, already_off=True)
        api, cid = self._engine.api, str(data["Id"])
        signal = (data.get("Config") or {}).get("StopSignal") or "SIGTERM"
        ident = _ident(instance)
        with self._engine.translate(f"power off {ident}", instance=ident):
            if state is PowerState.PAUSED:
                api.unpause(cid)  # a frozen process cannot act on its stop signal
            deadline = started + max(timeout, 0)
            while time.monotonic() < deadline:
                if not self._signal(cid, signal):
                    return self._off_result(started, forced=False)
                wait = min(max(retry_interval, 0.1), deadline - time.monotonic())
                if self._wait_stopped(cid, wait):
                    return self._off_result(started, forced=False)
            self._record_forced(data)
            if self._signal(cid, "SIGKILL"):
                self._wait_stopped(cid, self._engine.timeout)
            else:  # it stopped by itself meanwhile: its exit code is its own
                self._forced.forget(cid)
                return self._off_result(started, forced=False)
        LOG.info("docker: %s ignored %s for %gs and was killed", ident, signal, timeout)
        return self._off_result(started, forced=True)

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

    @staticmethod
    def _off_result(started: float, *, forced: bool) -> PowerOffResult:
        return PowerOffResult(
            clean=not forced, forced=forced, duration_s=round(time.monotonic() - started, 3)
        )

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        data = self._require(instance)
        if self._state(data) in states.ON_STATES:
            return
        with self._engine.translate(f"start {_ident(instance)}", instance=_ident(instance)):
            self._engine.api.start(data["Id"])

    def pause(self, *, instance: Instance) -> None:
        data = self._require(instance)
        state = self._state(data)
        if state is PowerState.PAUSED:
            return
        if state is not PowerState.RUNNING:
            raise InstanceNotRunning(_ident(instance), "pause")
        with self._engine.translate(f"pause {_ident(instance)}", instance=_ident(instance)):
            self._engine.api.pause(data["Id"])

    def unpause(self, *, instance: Instance) -> None:
        data = self._require(instance)
        state = self._state(data)
        if state is PowerState.RUNNING:
            return
        if state is not PowerState.PAUSED:
            raise InstanceNotRunning(_ident(instance), "unpause")
        with self._engine.translate(f"unpause {_ident(instance)}", instance=_ident(instance)):
            self._engine.api.unpause(data["Id"])

    # -- images ----------------------------------------------------------------------------

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        repository, tag = spec.parse_image_name(name)
        data = self._require(instance)
        ident = _ident(instance)
        labels = spec.snapshot_labels(instance.uuid)
        timeout = float(self._opts.snapshot_timeout)
        with self._engine.translate(f"commit {ident} to image {name!r}", instance=ident):
            try:
                result = self._commit(
                    str(data["Id"]), repository, tag, message=f"virtkit snapshot of {ident}",
                    labels=labels, timeout=timeout,
                )
            except requests.exceptions.ReadTimeout:
                raise self._commit_timeout(instance, f"{repository}:{tag}", timeout) from None
        image_id = str(result.get("Id", ""))
        LOG.info("docker: snapshot of %s is %s:%s (%s)", ident, repository, tag, image_id[:19])
        return ImageRef(
            ref=f"{repository}:{tag}", disk_format="docker", properties={"image_id": image_id}
        )

    def _commit(
        self, container_id: str, repository: str, tag: str, *, message: str,
        labels: dict[str, str], timeout: float,
    ) -> dict[str, Any]:
        """POST /commit like docker-py's commit(), bounded by `timeout` rather than the
        call timeout: a commit copies the container's whole filesystem."""
        api = self._engine.api
        params = {
            "container": container_id, "repo": repository, "tag": tag, "comment": message,
            "pause": True,
        }
        # docker-py's private helpers, as its commit() uses them: commit() takes no timeout.
        response = api._post_json(
            api._url("/commit"), data={"Labels": labels}, params=params,
            timeout=(self._engine.timeout, timeout),
        )
        result: dict[str, Any] = api._result(response, json=True)
        return result

    def _commit_timeout(self, instance: Instance, image: str, timeout: float) -> VirtError:
        """The error of a commit that outlasted `snapshot_timeout`; dockerd goes on with it."""
        label = f"{spec.LABEL_SNAPSHOT_OF}={instance.uuid}"
        LOG.warning(
            "docker: commit of %s to %s outlasted %gs; dockerd may still create the image",
            _ident(instance), image, timeout,
        )
        return VirtError(
            f"the snapshot of {_ident(instance)} to {image!r} did not finish within "
            f"{timeout:g}s; dockerd cannot cancel a commit, so it may still create that image "
            "(and unpause the container) when the commit ends",
            hint=f"look for it with 'docker image ls --filter label={label}' and remove it "
            "with docker rmi if unwanted; raise [docker] snapshot_timeout for large containers",
        )

    # -- guest -----------------------------------------------------------------------------

    def get_console_output(self, *, instance: Instance, max_bytes: int = 64 * 1024) -> str:
        data = self._require(instance)
        ident = _ident(instance)
        with self._engine.translate(f"read the log of {ident}", instance=ident):
            output = self._engine.api.logs(
                data["Id"], stdout=True, stderr=True, tail=self._opts.console_tail_lines
            )
        return guest.tail_text(output, max_bytes)

    def inject_file(self, *, instance: Instance, path: str, contents: bytes) -> None:
        target = guest.validate_guest_path(path)
        if not isinstance(contents, bytes | bytearray):
            raise InvalidRequest("file contents must be bytes")
        data = self._require(instance)
        ident = _ident(instance)
        api = self._engine.api
        with self._engine.translate(f"write {target} into {ident}", instance=ident):
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
        _check_password(password)
        data = self._require(instance)
        if self._state(data) is not PowerState.RUNNING:
            raise InstanceNotRunning(_ident(instance), "set_admin_password")
        self._set_password(instance, str(data["Id"]), password)

    def _set_password(self, instance: Instance, container_id: str, password: str) -> None:
        user = "root"
        if instance.image is not None:
            user = instance.image.properties.get(spec.ADMIN_USER_PROPERTY) or "root"
        if not user or any(ch in user for ch in ":\n\r\0"):
            raise InvalidRequest(f"admin user {user!r} is not a valid user name")
        ident = _ident(instance)
        timeout = self._engine.timeout
        with self._engine.translate(f"run chpasswd in {ident}", instance=ident):
            try:
                result = guest.exec_with_stdin(
                    self._engine.api,
                    container_id,
                    ["chpasswd"],
                    f"{user}:{password}\n".encode(),
                    user="root",
                    timeout=timeout,
                )
            except TimeoutError:  # the exec socket's timeout: the command hangs
                raise VirtError(
                    f"chpasswd in {ident} did not finish within {timeout:g}s; the admin "
                    f"password of user {user} may or may not have changed",
                    hint="check the guest (a hung PAM or /etc/shadow lock?) and set it again",
                ) from None
        output = result.output.replace(password, "***") if password else result.output
        if result.exit_code in guest.COMMAND_MISSING_CODES:
            raise UnsupportedOperation(
                self.name,
                "set_admin_password",
                reason=f"the image of {ident} has no chpasswd command",
            )
        if result.exit_code != 0:
            raise VirtError(
                f"chpasswd failed in {ident} (exit code {result.exit_code}): "
                f"{output or 'no output'}"
            )
        LOG.info("docker: admin password of %s (user %s) changed", ident, user)

    # -- events ----------------------------------------------------------------------------

    def register_event_listener(self, listener: Listener) -> None:
        super().register_event_listener(listener)
        self._start_watcher()

    def _start_watcher(self) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = EventWatcher(
                    self._engine,
                    host=self._host,
                    list_states=self._states,
                    emit=self.emit_event,
                    window=self._opts.event_window,
                    resync_interval=self._opts.resync_interval,
                    exit_state=self._exit_state,
                    removed=lambda cid: self._forced.forget(cid),
                )
                self._watcher.start()

    @property
    def event_watcher(self) -> EventWatcher | None:
        return self._watcher


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise InvalidRequest("the admin password must be a non-empty string")
    if any(ch in password for ch in "\n\r\0"):
        raise InvalidRequest("the admin password must not contain line breaks or NUL characters")


def _arch(name: str) -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def _version_number(version: str) -> int:
    """'20.10.24+dfsg1' -> 20010024 (Nova's major*1e6 + minor*1e3 + patch)."""
    numbers = []
    for part in version.split("+")[0].split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    numbers += [0] * (3 - len(numbers))
    return numbers[0] * 1_000_000 + numbers[1] * 1_000 + numbers[2]
