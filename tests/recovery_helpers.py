"""Shared set-up for recovery tests: instances of a 'failed' host recorded in a store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oslo_config import cfg

from virt.config import build_conf
from virt.driver import ComputeDriver, load_driver
from virt.model import (
    BlockDevice,
    Flavor,
    ImageRef,
    Instance,
    VmState,
    VolumeConnection,
    new_uuid,
)
from virt.recovery.engine import Recoverer
from virt.recovery.journal import RecoveryJournal
from virt.recovery.options import RecoveryOptions, register_opts
from virt.recovery.report import RecoveryReport
from virt.recovery.sources import InstanceSource, StoreSource
from virt.store import Store

FLAVOR = Flavor(name="m1.tiny", vcpus=1, memory_mb=64)


def driver_for(config: Path, host: str) -> ComputeDriver:
    """The driver `config` names, initialised as `host` (how a host's process would open it)."""
    conf = build_conf(str(config))
    driver = load_driver(conf.compute_driver, conf)
    driver.init_host(host=host)
    return driver


def iscsi_info(n: int, **extra: Any) -> dict[str, Any]:
    data = {"target_portal": "192.0.2.1:3260", "target_iqn": f"iqn.2024-01.org.test:v{n}",
            "target_lun": 1, "volume_id": f"vol-{n}", **extra}
    return {"driver_volume_type": "iscsi", "data": data}


def record_instances(store: Store, host: str, count: int, *, volumes: int = 0,
                     stopped: Sequence[int] = (), image: ImageRef | None = None,
                     infos: Sequence[dict[str, Any]] = (), prefix: str = "inst") -> list[str]:
    """Record `count` instances on `host`, each with `volumes` iSCSI volumes (vdb, vdc, ...)."""
    uuids = []
    for i in range(count):
        uuid = new_uuid()
        instance = Instance(uuid=uuid, name=f"{prefix}-{i:04d}", flavor=FLAVOR,
                            image=image or ImageRef("cirros"), host=host)
        state = VmState.STOPPED if i in stopped else VmState.ACTIVE
        store.create_instance(instance, vm_state=state)
        for v in range(volumes):
            info = infos[v] if infos else iscsi_info(i * 10 + v)
            store.add_block_device(uuid, BlockDevice(
                connection=VolumeConnection.from_connection_info(info),
                mountpoint=f"/dev/vd{chr(ord('b') + v)}"))
        uuids.append(uuid)
    return uuids


def recover(conf: cfg.ConfigOpts, store: Store, host: str, *,
            source: InstanceSource | None = None, **options: Any) -> RecoveryReport:
    """Run a Recoverer as `host` (fake driver unless conf says otherwise) on the store's
    instances, or on `source`'s."""
    register_opts(conf)
    driver = load_driver(conf.compute_driver, conf)
    driver.init_host(host=host)
    options.setdefault("volume_check", "none")
    recoverer = Recoverer(driver=driver, source=source or StoreSource(store),
                          journal=RecoveryJournal(store, host=host), host=host,
                          options=RecoveryOptions(**options))
    return recoverer.run()
