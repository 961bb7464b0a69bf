"""iSCSI volumes through the host's kernel initiator (`iscsi_attach = host`), with os-brick.

os-brick logs the host in to the target (open-iscsi's `iscsiadm` and the `iscsi_tcp` kernel
module), and the LUN appears as a host block device; the domain gets it as a raw
`<disk type='block'><source dev=PATH/>`. The CHAP credentials go to os-brick in the
connection properties only: never into the domain XML, a libvirt secret or virtkit's logs
(os-brick masks them in its own logs, but hands the password to `iscsiadm --op update` as an
argument: that is how open-iscsi's node records are written).

os-brick is an optional extra (`pip install 'virtkit[libvirt-host-iscsi]'`) and is imported
only when this mode is used. The connector keeps the interface of the native one
(`IscsiNativeVolumes`): validate, prepare, release, remove_secret, remove_instance_secrets,
initiator, plus `check` (what the host needs) and `disconnect` (by connection_info, so a
detach or destroy after a restart of the process still logs out).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from drivers.libvirt import xml
from drivers.libvirt.volumes import PreparedVolume
from virt.errors import ConfigError, VirtError, VolumeError
from virt.masking import scrub
from virt.model import BlockDevice, Instance
from virt.volume import libiscsi
from virt.volume.iscsi import (
    IscsiConnector,
    IscsiTarget,
    parse_iscsi_target,
    reachable_path,
)

LOG = logging.getLogger(__name__)

EXTRA = "libvirt-host-iscsi"
# os-brick runs privileged commands through this prefix (or privsep) when not root; as root
# its privileged calls run in this process.
ROOT_HELPER = "sudo"
SYS_MODULE = "/sys/module"
# modprobe lives in sbin, which is not on every PATH.
SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin")
KERNEL_MODULE = "iscsi_tcp"

Factory = Callable[..., Any]


def _import_os_brick() -> Factory:
    """os-brick's InitiatorConnector.factory (ImportError when os-brick is missing)."""
    module = importlib.import_module("os_brick.initiator.connector")
    factory: Factory = module.InitiatorConnector.factory
    return factory


def _setup_os_brick(lock_path: str) -> None:
    """os-brick reads its options (lock_path) from oslo.config's global CONF; set them once."""
    import os_brick
    from oslo_config import cfg

    os_brick.setup(cfg.CONF)
    if not cfg.CONF.os_brick.lock_path:
        cfg.CONF.set_default("lock_path", lock_path, group="os_brick")
    if os.geteuid() == 0:
        # Already root: run os-brick's privileged calls here instead of starting a privsep
        # daemon through sudo (which a root service host need not have).
        from os_brick import privileged

        privileged.default.set_client_mode(False)
        privileged.brick_privsep_hide_output.set_client_mode(False)


def os_brick_factory(lock_path: str) -> Factory:
    """The real connector factory: imports and sets up os-brick (only in host mode)."""
    factory = _import_os_brick()
    _setup_os_brick(lock_path)
    return factory


# -- what the host needs --------------------------------------------------------------------

def _kernel_module_problem() -> str | None:
    """None when iscsi_tcp is loaded (or built in) or modprobe can load it, else why not."""
    if os.path.isdir(os.path.join(SYS_MODULE, KERNEL_MODULE)):
        return None
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    modprobe = shutil.which("modprobe", path=path)
    if modprobe is None:
        return (f"the kernel module {KERNEL_MODULE} (the kernel's iSCSI initiator) is not "
                f"loaded ({SYS_MODULE}/{KERNEL_MODULE} is missing) and there is no modprobe "
                f"to load it")
    try:
        done = subprocess.run([modprobe, "-n", KERNEL_MODULE], capture_output=True, text=True,
                              timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the kernel module {KERNEL_MODULE} is not loaded and modprobe failed: {exc}"
    if done.returncode == 0:
        return None
    why = (done.stderr or done.stdout).strip().splitlines()
    return (f"the kernel module {KERNEL_MODULE} (the kernel's iSCSI initiator) is not loaded "
            f"and cannot be loaded (modprobe -n {KERNEL_MODULE}: "
            f"{why[-1] if why else f'exit {done.returncode}'})")


def missing_requirements() -> list[str]:
    """Everything host mode needs that this host lacks, each with what to do (empty: ready)."""
    problems = []
    try:
        _import_os_brick()
    except ImportError as exc:
        problems.append(f"os-brick is not installed ({exc}): pip install 'virtkit[{EXTRA}]'")
    if shutil.which("iscsiadm") is None:
        problems.append("iscsiadm is not on PATH: install open-iscsi (apt-get install "
                        "open-iscsi) and start iscsid")
    module = _kernel_module_problem()
    if module:
        problems.append(module)
    return problems


def check_requirements() -> None:
    """ConfigError naming whatever host mode lacks here."""
    problems = missing_requirements()
    if problems:
        raise ConfigError("[libvirt] iscsi_attach = host cannot attach volumes on this host: "
                          + "; ".join(problems),
                          hint="fix the above, or set iscsi_attach = native (QEMU's own "
                          "initiator, no kernel module needed)")


# -- the connector --------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A mutable deep copy of connection_info data (the model's mappings are read-only)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class IscsiHostVolumes:
    """Log the host in to iSCSI LUNs with os-brick and hand the block devices to libvirt."""

    def __init__(self, *, probe_timeout: float, lock_path: str,
                 factory: Factory | None = None) -> None:
        self._timeout = probe_timeout
        self._lock_path = lock_path
        self._factory = factory
        self._checked = False
        self._connector: Any = None
        self._initiator: str | None = None
        self._lock = threading.Lock()
        # (portal, iqn, lun) -> (device path, connection properties, os-brick device_info)
        # of what this process connected; a restart forgets it (disconnect() still works).
        self._attached: dict[tuple[str, str, int], tuple[str, dict[str, Any], dict[str, Any]]] = {}

    # -- setup ------------------------------------------------------------------------------

    def check(self) -> None:
        """ConfigError naming what the host lacks (os-brick, iscsiadm, iscsi_tcp); once ok,
        not checked again."""
        if not self._checked:
            check_requirements()
            self._checked = True

    def _brick(self) -> Any:
        with self._lock:
            if self._connector is None:
                self.check()
                factory = self._factory or os_brick_factory(self._lock_path)
                self._connector = factory("ISCSI", ROOT_HELPER, use_multipath=False)
            return self._connector

    @property
    def initiator(self) -> str:
        """This host's initiator IQN, from os-brick's iSCSI connector properties."""
        if self._initiator is None:
            props = self._brick().get_connector_properties(ROOT_HELPER)
            name = props.get("initiator") if isinstance(props, dict) else None
            if not name:
                raise ConfigError("os-brick found no iSCSI initiator name on this host",
                                  hint="open-iscsi writes it to /etc/iscsi/initiatorname.iscsi")
            self._initiator = str(name)
        return self._initiator

    # -- the interface the driver uses ------------------------------------------------------

    @staticmethod
    def validate(block_device: BlockDevice) -> IscsiTarget:
        """Parse the connection_info; InvalidRequest naming the missing or bad field."""
        return parse_iscsi_target(block_device.connection)

    def prepare(self, instance: Instance, block_device: BlockDevice, *,
                cache: str | None) -> PreparedVolume:
        """Probe the LUN, log the host in (os-brick), and describe its block device."""
        target = self.validate(block_device)
        key = _key(target)
        connector = self._brick()
        if key in self._attached:
            raise VolumeError(f"iSCSI volume {target.source_name} is already connected on this "
                              f"host (at {self._attached[key][0]})",
                              hint="host mode attaches a LUN to one instance per host")
        self._probe(block_device, target)
        props = _plain(block_device.connection.data)
        try:
            info = connector.connect_volume(props)
        except Exception as exc:  # os-brick's errors: BrickException, ProcessExecutionError …
            raise VolumeError(f"os-brick could not connect iSCSI volume {target.source_name} at "
                              f"{target.portal}: {type(exc).__name__}: "
                              f"{scrub(str(exc), target.auth_password)}",
                              hint="check the target, the CHAP credentials and iscsid") from None
        path = info.get("path") if isinstance(info, dict) else None
        if not isinstance(info, dict) or info.get("type") != "block" or \
                not isinstance(path, str) or not path.startswith("/"):
            self._disconnect(target, props, info if isinstance(info, dict) else None, force=True)
            raise VolumeError(f"os-brick connected {target.source_name} but returned no block "
                              f"device path (type {info.get('type') if isinstance(info, dict) else None!r})")
        self._attached[key] = (path, props, dict(info))
        LOG.info("iSCSI volume %s at %s connected as %s for %s", target.source_name,
                 target.portal, path, instance.uuid)
        disk = xml.Disk(
            target_dev=block_device.device_name,
            target_bus=block_device.disk_bus or "virtio",
            source_type="block",
            source_path=path,
            driver_type="raw",
            cache=cache,
            serial=(block_device.volume_id or None),
        )
        return PreparedVolume(disk, None)

    def release(self, disks: list[xml.Disk]) -> None:
        """Disconnect the block devices of these disks that this process connected."""
        paths = {d.source_path for d in disks if d.source_type == "block" and d.source_path}
        for key, (path, props, info) in list(self._attached.items()):
            if path in paths:
                self._attached.pop(key, None)
                self._disconnect_logged(key, props, info)

    def disconnect(self, block_devices: Iterable[BlockDevice], *, force: bool = False,
                   raise_errors: bool = True) -> None:
        """Log out of these volumes by their connection_info (known to this process or not)."""
        for block_device in block_devices:
            try:
                target = self.validate(block_device)
            except VirtError as exc:  # destroy goes on past a malformed row
                if raise_errors:
                    raise
                LOG.error("cannot disconnect %s: %s", block_device.mountpoint, exc)
                continue
            key = _key(target)
            entry = self._attached.pop(key, None)
            props = entry[1] if entry else _plain(block_device.connection.data)
            info = entry[2] if entry else None
            if raise_errors:
                self._disconnect(target, props, info, force=force)
            else:
                self._disconnect_logged(key, props, info, force=force)

    def remove_secret(self, usage: str) -> None:
        """Host mode makes no libvirt secrets: nothing to remove."""

    def remove_instance_secrets(self, instance_uuid: str) -> None:
        """Host mode makes no libvirt secrets: nothing to remove."""

    # -- helpers ----------------------------------------------------------------------------

    def _probe(self, block_device: BlockDevice, target: IscsiTarget) -> None:
        """Typed errors (unreachable portal, refused CHAP, no LUN) before os-brick logs in:
        libiscsi's probe where libiscsi is installed, else a bounded TCP connect."""
        if libiscsi.available():
            IscsiConnector(initiator=self.initiator).probe(block_device.connection,
                                                           timeout=self._timeout)
        else:
            reachable_path(target, self._timeout)

    def _disconnect(self, target: IscsiTarget, props: dict[str, Any],
                    info: dict[str, Any] | None, *, force: bool = False) -> None:
        try:
            self._brick().disconnect_volume(props, info, force=force)
        except Exception as exc:
            raise VolumeError(f"os-brick could not disconnect iSCSI volume "
                              f"{target.source_name}: {type(exc).__name__}: "
                              f"{scrub(str(exc), target.auth_password)}",
                              hint="the host may keep its session; see iscsiadm -m session") from None
        LOG.info("iSCSI volume %s at %s disconnected", target.source_name, target.portal)

    def _disconnect_logged(self, key: tuple[str, str, int], props: dict[str, Any],
                           info: dict[str, Any] | None, *, force: bool = True) -> None:
        try:
            self._disconnect(parse_iscsi_target({"driver_volume_type": "iscsi", "data": props}),
                             props, info, force=force)
        except VolumeError as exc:
            LOG.error("%s", exc)  # its text has the password masked


def _key(target: IscsiTarget) -> tuple[str, str, int]:
    return (str(target.portal), target.target_iqn, target.target_lun)


__all__ = ["IscsiHostVolumes", "check_requirements", "missing_requirements"]
