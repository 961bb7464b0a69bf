"""The containers of one host: finding an instance's, listing them, and reading their
PowerState with the record of the driver's own forced stops."""

from __future__ import annotations

from typing import Any

import docker.errors

from drivers.docker import spec, states
from drivers.docker.connection import Engine
from drivers.docker.forced import ForcedStops
from virt.errors import InstanceNotFound
from virt.model import Instance, PowerState


def ident(instance: Instance) -> str:
    """How messages name an instance: 'name (uuid)'."""
    return f"{instance.name} ({instance.uuid})"


class Containers:
    """Lookups of the containers that are virtkit's on host `host` (by its labels)."""

    def __init__(self, engine: Engine, host: str, forced: ForcedStops) -> None:
        self._engine = engine
        self.host = host
        #: The runs the driver SIGKILLed itself (their 137 exit is a stop, not a crash).
        self.forced = forced

    def list(self) -> list[dict[str, Any]]:
        """The container-list entries of this host's containers."""
        with self._engine.translate("list containers"):
            entries: list[dict[str, Any]] = self._engine.api.containers(
                all=True, filters={"label": spec.host_filters(self.host)}
            )
        return entries

    def _is_ours(self, data: dict[str, Any] | None, instance: Instance) -> bool:
        labels = ((data or {}).get("Config") or {}).get("Labels") or {}
        return (
            labels.get(spec.LABEL_MANAGED) == "1"
            and labels.get(spec.LABEL_HOST) == self.host
            and labels.get(spec.LABEL_UUID) == instance.uuid
        )

    def find(self, instance: Instance) -> dict[str, Any] | None:
        """`docker inspect` of the instance's container, or None; never a foreign container."""
        api = self._engine.api
        with self._engine.translate(f"look up the container of {ident(instance)}"):
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
                    "label": [*spec.host_filters(self.host), f"{spec.LABEL_UUID}={instance.uuid}"]
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

    def require(self, instance: Instance) -> dict[str, Any]:
        """Like `find`, but InstanceNotFound if there is none."""
        data = self.find(instance)
        if data is None:
            raise InstanceNotFound(ident(instance))
        return data

    def state(self, data: dict[str, Any]) -> PowerState:
        """PowerState from `docker inspect`, with the record of the driver's forced stops."""
        state = data.get("State") or {}
        forced = self.forced.matches(str(data.get("Id")), str(state.get("StartedAt") or ""))
        return states.from_inspect(state, forced=forced)

    def record_forced(self, data: dict[str, Any], *, persist: bool = True) -> None:
        """Before the driver SIGKILLs (or may SIGKILL) the current run of a container."""
        started_at = str((data.get("State") or {}).get("StartedAt") or "")
        self.forced.record(str(data["Id"]), started_at, persist=persist)

    def states(self) -> dict[str, PowerState]:
        """uuid -> PowerState of every container of this host (the watcher's resync).

        Running, paused and created containers read from the list; an exited or dead one is
        inspected, so that its state is the one get_info reports (OOMKilled, exit code,
        the driver's own forced stops).
        """
        result: dict[str, PowerState] = {}
        for entry in self.list():
            uuid = (entry.get("Labels") or {})[spec.LABEL_UUID]
            if not states.needs_inspect(str(entry.get("State", ""))):
                result[uuid] = states.from_list_entry(entry)
                continue
            with self._engine.translate("inspect a stopped container"):
                try:
                    data = self._engine.api.inspect_container(entry["Id"])
                except docker.errors.NotFound:
                    continue  # removed since the list call: it is gone
            result[uuid] = self.state(data)
        return result

    def exit_state(self, container_id: str, exit_code: int, oom: bool) -> PowerState:
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
            return self.state(data)
        return states.exit_state(exit_code, oom, forced=self.forced.has(container_id))
