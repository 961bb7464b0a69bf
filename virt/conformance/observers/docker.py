"""dockerd seen from outside the docker driver: its own docker SDK client to the same daemon.

Containers are found by the labels the driver documents (`virtkit.uuid` on a container made
for a host); what the guest holds is read with the archive API, the admin password checked
against the container's `/etc/shadow` entry, and the guest's clock is the CPU time of its
cgroup while a light ticker of the observer's runs in it.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import tarfile
import warnings
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors

from virt.conformance.observers import NotObserved, Observer
from virt.model import Flavor, Instance, PowerState, new_uuid

MARK_DIR = "/"  # every image has it
MARK_NAME = "virtkit-conformance-disk-mark"
#: A light load the observer runs in a guest to time it by the CPU its cgroup uses (a
#: paused container's cgroup is frozen, so the count stands still).
TICKER = ["sh", "-c", "while :; do i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; "
          "sleep 0.1; done"]
_STATES = {"running": PowerState.RUNNING, "paused": PowerState.PAUSED,
           "exited": PowerState.SHUTDOWN, "created": PowerState.SHUTDOWN,
           "dead": PowerState.CRASHED}


class DockerObserver(Observer):
    """Its own docker client to the driver's `[docker] base_url`."""

    name = "docker"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._client: docker.DockerClient | None = None
        self._ticking: set[str] = set()
        #: uuid -> container name of each foreign instance made and not yet removed.
        self._foreign: dict[str, str] = {}

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.settings.conf.docker.base_url,
                                               timeout=60)
        return self._client

    def _container(self, instance: Instance) -> Any | None:
        if instance.uuid in self._foreign:  # someone else's: no virtkit label, by its name
            try:
                return self.client.containers.get(self._foreign[instance.uuid])
            except docker.errors.NotFound:
                return None
        found = self.client.containers.list(
            all=True, filters={"label": f"virtkit.uuid={instance.uuid}"})
        return found[0] if found else None

    def _must(self, instance: Instance) -> Any:
        container = self._container(instance)
        if container is None:
            raise AssertionError(f"dockerd has no container of instance {instance.uuid}")
        return container

    def _read(self, instance: Instance, path: str) -> bytes | None:
        try:
            stream, _ = self._must(instance).get_archive(path)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None else None
            return handle.read() if handle is not None else None

    # -- the engine object --------------------------------------------------------------------

    def exists(self, instance: Instance) -> bool:
        return self._container(instance) is not None

    def power_state(self, instance: Instance) -> PowerState:
        return _STATES.get(self._must(instance).status, PowerState.UNKNOWN)

    def boot_id(self, instance: Instance) -> str:
        return str(self._must(instance).attrs["State"]["StartedAt"])

    def clock(self, instance: Instance) -> float:
        container = self._must(instance)
        if instance.uuid not in self._ticking:
            if container.status != "running":
                raise NotObserved("a guest's clock is timed from a running guest on")
            container.exec_run(TICKER, detach=True)
            self._ticking.add(instance.uuid)
        stats = self.client.api.stats(container.id, stream=False, one_shot=True)
        return float(stats["cpu_stats"]["cpu_usage"]["total_usage"])

    def leftovers(self, instance: Instance) -> list[str]:
        container = self._container(instance)
        return [f"docker container {container.name}"] if container is not None else []

    def vifs(self, instance: Instance) -> list[str]:
        networks = self._must(instance).attrs["NetworkSettings"].get("Networks") or {}
        return sorted({str(n["MacAddress"]).lower() for n in networks.values()
                       if n.get("MacAddress")})

    # -- the guest --------------------------------------------------------------------------

    def has_file(self, instance: Instance, path: str, contents: bytes) -> bool:
        return self._read(instance, path) == contents

    def password_works(self, instance: Instance, password: str) -> bool:
        user = (instance.image.properties.get("os_admin_user") if instance.image else None) \
            or "root"
        shadow = (self._read(instance, "/etc/shadow") or b"").decode("utf-8", "replace")
        stored = next((line.split(":")[1] for line in shadow.splitlines()
                       if line.startswith(f"{user}:")), "")
        if not stored.startswith("$"):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import crypt
            except ImportError:
                raise NotObserved("this Python has no crypt module to check the shadow "
                                  "entry") from None
        return bool(crypt.crypt(password, stored) == stored)

    def console_has(self, instance: Instance, marker: str) -> bool:
        return marker in self._must(instance).logs().decode("utf-8", "replace")

    # -- disks and images -------------------------------------------------------------------

    def mark_disk(self, instance: Instance) -> str:
        token = secrets.token_hex(8)
        data = token.encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(MARK_NAME)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        self._must(instance).put_archive(MARK_DIR, archive.getvalue())
        return token

    def disk_has_mark(self, instance: Instance, token: str) -> bool:
        return self._read(instance, f"/{MARK_NAME}") == token.encode()

    def booted_image(self, instance: Instance) -> str:
        return str(self._must(instance).attrs["Config"]["Image"])

    # -- objects of others ------------------------------------------------------------------

    @contextlib.contextmanager
    def foreign_instance(self) -> Iterator[Instance]:
        """A running container of the suite's image made through this observer's own client,
        without virtkit's labels."""
        uuid = new_uuid()
        flavor = Flavor("foreign", 1, 64)
        instance = Instance(uuid=uuid, name=f"foreign-{uuid[:8]}", flavor=flavor)
        container = self.client.containers.create(
            self.settings.opts.image_ref, name=instance.name, tty=True, stdin_open=True,
            mem_limit=f"{flavor.memory_mb}m", labels={"virtkit-conformance.foreign": uuid})
        self._foreign[uuid] = instance.name
        try:
            container.start()
            yield instance
        finally:
            del self._foreign[uuid]
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
