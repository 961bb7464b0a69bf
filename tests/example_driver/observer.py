"""The example engine seen without the example driver: the suite's observer for it.

It talks to the engine through the engine's own client (what a real backend's observer does
with the engine's SDK), never through the driver, and answers the probes this engine can:
whether a guest is there, its state, its boots, its clock, its disk file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from tests.example_driver import engine
from virt.conformance.observers import Observer
from virt.model import Instance, PowerState

STATES = {engine.HALTED: PowerState.SHUTDOWN, engine.RUNNING: PowerState.RUNNING,
          engine.FROZEN: PowerState.PAUSED}
MARK = b"virtkit-conformance-mark:"


class ExampleObserver(Observer):
    """The example engine's view of the suite's guests."""

    name = "example"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._client: engine.EngineClient | None = None

    @property
    def client(self) -> engine.EngineClient:
        if self._client is None:
            root = self.settings.conf.example.engine_path
            self._client = engine.EngineClient(root, timeout=10, memory_mb=1 << 20)
        return self._client

    def _guest(self, instance: Instance) -> dict[str, Any] | None:
        try:
            return self.client.guest(instance.uuid)
        except engine.EngineError as exc:
            if exc.code == "no-such-guest":
                return None
            raise

    def _disk(self, instance: Instance) -> Path:
        return Path(self.settings.conf.instances_path) / "example" / instance.uuid / "disk"

    def exists(self, instance: Instance) -> bool:
        return self._guest(instance) is not None

    def power_state(self, instance: Instance) -> PowerState:
        return STATES[self.client.guest(instance.uuid)["state"]]

    def boot_id(self, instance: Instance) -> str:
        return str(self.client.guest(instance.uuid).get("boots", 0))

    def clock(self, instance: Instance) -> float:
        return self.client.uptime(instance.uuid)

    def leftovers(self, instance: Instance) -> list[str]:
        left = [f"example guest {instance.uuid}"] if self.exists(instance) else []
        return left + [str(p) for p in (self._disk(instance),) if p.exists()]

    def mark_disk(self, instance: Instance) -> str:
        token = secrets.token_hex(8)
        with open(self._disk(instance), "ab") as disk:
            disk.write(MARK + token.encode())
        return token

    def disk_has_mark(self, instance: Instance, token: str) -> bool:
        path = self._disk(instance)
        return os.path.exists(path) and (MARK + token.encode()) in path.read_bytes()
