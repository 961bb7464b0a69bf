"""The fake engine seen from outside the fake driver: its JSON state files, read directly.

The layout is the fake's documented format (`<instances_path>/fake-hypervisor-<host>/`,
one `<uuid>.json` per instance, its root disk in `<instances_path>/fake-disks/<uuid>`,
`.lock` taken exclusively for a change, changes written to a temp file renamed over the old one); this module reads and writes it with its own code, so a
driver that only claims to have done something is caught by what the files hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from virt.conformance.observers import NotObserved, Observer
from virt.model import Flavor, Instance, PowerState, new_uuid

MARK_PATH = "/var/lib/virtkit-conformance/disk-mark"


class FakeObserver(Observer):
    """Reads (and, for a disk mark, writes) the fake engine's state files."""

    name = "fake"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        #: uuid -> the record file of each foreign instance made and not yet removed.
        self._foreign: dict[str, Path] = {}

    @property
    def directory(self) -> Path:
        conf = self.settings.conf
        return Path(conf.instances_path) / f"fake-hypervisor-{conf.host}"

    def _path(self, instance: Instance) -> Path:
        foreign = self._foreign.get(instance.uuid)
        return foreign if foreign is not None else self.directory / f"{instance.uuid}.json"

    def _record(self, instance: Instance) -> dict[str, Any]:
        try:
            return json.loads(self._path(instance).read_bytes())
        except FileNotFoundError:
            raise NotObserved(f"the fake engine has no record of {instance.uuid}") from None

    def exists(self, instance: Instance) -> bool:
        return self._path(instance).exists()

    def power_state(self, instance: Instance) -> PowerState:
        return PowerState(self._record(instance)["state"])

    def boot_id(self, instance: Instance) -> str:
        return str(self._record(instance).get("boot_id"))

    def clock(self, instance: Instance) -> float:
        clock = self._record(instance).get("clock") or {}
        since = clock.get("since")
        return float(clock.get("elapsed", 0.0)) + (time.time() - since if since else 0.0)

    def leftovers(self, instance: Instance) -> list[str]:
        return [str(p) for p in (self._path(instance), self._disk_path(instance)) if p.exists()]

    def _disk_path(self, instance: Instance) -> Path:
        return Path(self.settings.conf.instances_path) / "fake-disks" / instance.uuid

    def _disk(self, instance: Instance) -> dict[str, Any]:
        try:
            return json.loads(self._disk_path(instance).read_bytes())
        except FileNotFoundError:
            raise AssertionError(f"the fake engine has no root disk of {instance.uuid}") from None

    def has_file(self, instance: Instance, path: str, contents: bytes) -> bool:
        entry = self._disk(instance)["files"].get(path)
        return entry == {"size": len(contents), "sha256": hashlib.sha256(contents).hexdigest()}

    def password_works(self, instance: Instance, password: str) -> bool:
        kept = self._record(instance).get("admin_password")
        if not kept:
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(kept["salt"]),
                                n=2**14, r=8, p=1, dklen=32)
        return hmac.compare_digest(digest.hex(), kept["scrypt"])

    def console_has(self, instance: Instance, marker: str) -> bool:
        return any(marker in line for line in self._record(instance)["console"])

    def mark_disk(self, instance: Instance) -> str:
        token = secrets.token_hex(8)
        data = token.encode()
        with self._locked():
            disk = self._disk(instance)
            disk["files"][MARK_PATH] = {"size": len(data),
                                        "sha256": hashlib.sha256(data).hexdigest()}
            self._replace(self._disk_path(instance), disk)
        return token

    def disk_has_mark(self, instance: Instance, token: str) -> bool:
        return self.has_file(instance, MARK_PATH, token.encode())

    def booted_image(self, instance: Instance) -> str:
        return str(self._record(instance).get("booted_image"))

    def original_disk_attached(self, instance: Instance) -> bool:
        return "root" in self._record(instance).get("disks", ())

    def volumes(self, instance: Instance) -> Mapping[str, str]:
        found = {}
        for mountpoint, entry in self._record(instance)["block_devices"].items():
            data = (entry.get("connection_info") or {}).get("data", {})
            found[mountpoint] = f"{data.get('target_iqn')}/{data.get('target_lun')}"
        return found

    def vifs(self, instance: Instance) -> list[str]:
        return [str(v["address"]).lower() for v in self._record(instance)["vifs"]]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _replace(path: Path, record: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".observer-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, sort_keys=True, separators=(",", ":"))
            handle.write("\n")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def foreign_instance(self) -> Iterator[Instance]:
        """A running instance of another fake host on the same instances_path (the fake's
        engine is one directory per host: another host's record is the one kind of someone
        else's object it holds)."""
        uuid = new_uuid()
        other = f"virtkit-conformance-foreign-{secrets.token_hex(4)}"
        directory = Path(self.settings.conf.instances_path) / f"fake-hypervisor-{other}"
        instance = Instance(uuid=uuid, name=f"foreign-{uuid[:8]}", host=other,
                            flavor=Flavor("foreign", 2, 256))
        now = time.time()
        record = {
            "uuid": uuid, "name": instance.name, "host": other, "state": "running",
            "flavor": {"name": "foreign", "vcpus": 2, "memory_mb": 256, "root_gb": 1,
                       "ephemeral_gb": 0, "swap_mb": 0},
            "image": {"ref": "foreign", "disk_format": None, "kernel": None, "ramdisk": None,
                      "kernel_cmdline": None},
            "created_at": now, "cpu_time_ns": 0, "running_since": now,
            "boot_id": secrets.token_hex(16), "clock": {"elapsed": 0.0, "since": now},
            "booted_image": "foreign", "disks": ["root"], "block_devices": {}, "vifs": [],
            "rescued": False, "admin_password": None, "admin_password_changed_at": None,
            "console": [],
        }
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid}.json"
        self._replace(path, record)
        self._foreign[uuid] = path
        try:
            yield instance
        finally:
            del self._foreign[uuid]
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()
