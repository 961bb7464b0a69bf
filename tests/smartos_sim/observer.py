"""The SmartOS simulator seen without the driver: the conformance suite's observer for it.

Named in a conformance config as
`[conformance] observer = tests.smartos_sim.observer:SmartOSSimObserver`. It reads (and for a
disk mark or a foreign zone, writes) the simulator's state root directly, under the
simulator's lock, never through the driver or the tools the driver runs. The state root is
the one the driver's `[smartos] bin_dir` wrappers were installed for, else
$VIRTKIT_TEST_SMARTOS_ROOT.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.smartos_sim import datasets, guest, images, vms
from tests.smartos_sim.install import state_root_of
from tests.smartos_sim.state import POOL, SimError, State
from virt.conformance.observers import NotObserved, Observer
from virt.model import Flavor, Instance, PowerState

STATES = {"running": PowerState.RUNNING, "stopped": PowerState.SHUTDOWN,
          "stopping": PowerState.SHUTDOWN, "shutting_down": PowerState.SHUTDOWN,
          "down": PowerState.SHUTDOWN, "failed": PowerState.CRASHED,
          "provisioning": PowerState.NOSTATE, "receiving": PowerState.NOSTATE,
          "configured": PowerState.NOSTATE, "incomplete": PowerState.NOSTATE,
          "ready": PowerState.NOSTATE}
MARK_PATH = "/var/lib/virtkit-conformance/disk-mark"
ROOT_ENV = "VIRTKIT_TEST_SMARTOS_ROOT"


def find_state_root(settings: Any) -> Path | None:
    """The simulator's state root for this run: from the driver's bin_dir, else the env."""
    with contextlib.suppress(Exception):  # no [smartos] group registered: the env decides
        bin_dir = settings.conf.smartos.bin_dir
        if bin_dir:
            found = state_root_of(bin_dir)
            if found is not None:
                return found
    value = os.environ.get(ROOT_ENV)
    return Path(value) if value else None


class SmartOSSimObserver(Observer):
    """Reads the simulator's zones, datasets and guest files."""

    name = "smartos-sim"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._state: State | None = None

    @property
    def state(self) -> State:
        if self._state is None:
            root = find_state_root(self.settings)
            if root is None or not (root / "host.json").exists():
                raise NotObserved("the SmartOS simulator's state root is unknown (set "
                                  f"[smartos] bin_dir to its wrappers or ${ROOT_ENV})")
            self._state = State(root)
        return self._state

    def _vm(self, instance: Instance) -> dict[str, Any]:
        with self.state.locked():
            vm = vms.load(self.state, instance.uuid)
        if vm is None:
            raise NotObserved(f"the simulator has no zone {instance.uuid}")
        return vm

    def _root(self, instance: Instance) -> str:
        self._vm(instance)
        return vms.zone_root(self.state, instance.uuid)

    # -- the engine object --------------------------------------------------------------------

    def exists(self, instance: Instance) -> bool:
        return self.state.vm_path(instance.uuid).exists()

    def power_state(self, instance: Instance) -> PowerState:
        return STATES.get(self._vm(instance)["state"], PowerState.UNKNOWN)

    def boot_id(self, instance: Instance) -> str:
        vm = self._vm(instance)
        return f"{vm['create_timestamp']}#{vm.get('_sim', {}).get('boots', 0)}"

    def leftovers(self, instance: Instance) -> list[str]:
        uuid = instance.uuid
        left = []
        state = self.state
        with state.locked():
            if state.vm_path(uuid).exists():
                left.append(f"zone {uuid}")
            left += [f"dataset {name}" for name in sorted(datasets.load(state)) if uuid in name]
            for base in (state.root / POOL, state.root / ".snapshots" / POOL,
                         state.root / ".zvol" / POOL):
                if base.is_dir():
                    left += [f"directory {p}" for p in sorted(base.iterdir()) if uuid in p.name]
        return left

    # -- the guest ----------------------------------------------------------------------------

    def has_file(self, instance: Instance, path: str, contents: bytes) -> bool:
        try:
            target = guest.resolve(self._root(instance), path)
            return target.read_bytes() == contents
        except (guest.GuestError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False

    def password_works(self, instance: Instance, password: str) -> bool:
        return guest.password_matches(self._root(instance), "root", password)

    # -- disks, images, network ---------------------------------------------------------------

    def mark_disk(self, instance: Instance) -> str:
        token = secrets.token_hex(8)
        with self.state.locked():
            target = guest.resolve(vms.zone_root(self.state, instance.uuid), MARK_PATH)
            target.parent.mkdir(parents=True, exist_ok=True)
            guest.replace_file(target, f"virtkit-conformance-mark:{token}\n".encode())
        return token

    def disk_has_mark(self, instance: Instance, token: str) -> bool:
        try:
            target = guest.resolve(self._root(instance), MARK_PATH)
            return token.encode() in target.read_bytes()
        except (guest.GuestError, FileNotFoundError, NotADirectoryError):
            return False

    def booted_image(self, instance: Instance) -> str:
        """The image the zone's root (or first disk) is a clone of."""
        vm = self._vm(instance)
        with self.state.locked():
            db = datasets.load(self.state)
        names = [d["zfs_filesystem"] for d in vm.get("disks", [])] + [vm["zfs_filesystem"]]
        for name in names:
            origin = (db.get(name) or {}).get("origin")
            if origin:
                return str(origin).partition("@")[0].rpartition("/")[2]
        raise NotObserved(f"zone {instance.uuid} is not a clone of an image")

    def vifs(self, instance: Instance) -> list[str]:
        return [str(n["mac"]) for n in self._vm(instance).get("nics", [])]

    # -- objects of others --------------------------------------------------------------------

    @contextlib.contextmanager
    def foreign_instance(self) -> Iterator[Instance]:
        """A running zone made on the simulator directly, without virtkit's mark."""
        state = self.state
        with state.locked():
            zone_images = [u for u, m in images.manifests(state).items()
                           if m.get("type") == "zone-dataset"]
            body: dict[str, Any] = (
                {"brand": "joyent", "image_uuid": zone_images[0], "max_physical_memory": 128}
                if zone_images else {"brand": "kvm", "ram": 128})
            body["alias"] = f"foreign-{secrets.token_hex(3)}"
            faults = state.faults()
            state.set_faults({k: v for k, v in faults.items() if k != "provision"})
            try:
                vm, _warnings, _failure = vms.create(state, body)
            finally:
                state.set_faults(faults)
        instance = Instance(uuid=vm["uuid"], name=f"foreign-{vm['uuid'][:8]}",
                            flavor=Flavor("foreign", 1, 128))
        try:
            yield instance
        finally:
            with state.locked(), contextlib.suppress(SimError):
                vms.delete(state, vm["uuid"])
