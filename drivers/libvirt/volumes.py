"""iSCSI volumes through QEMU's own initiator (`native` mode).

The disk is a libvirt network disk. CHAP credentials live in a libvirt secret (usage
`iscsi`) created with the attachment and removed with it; its value is set through the API
(`secretSetValue`), never written into XML, a command line or a log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from drivers.libvirt import xml
from drivers.libvirt.connection import Connection
from virt.errors import UnsupportedOperation, VolumeError
from virt.model import BlockDevice, Instance
from virt.volume.iscsi import IscsiConnector, IscsiTarget, parse_iscsi_target

LOG = logging.getLogger(__name__)
# libvirt's schema allows only [A-Za-z0-9_+-] in a disk's secret usage reference.
SECRET_PREFIX = "virtkit-"


def secret_usage(instance_uuid: str, device: str) -> str:
    """The usage id of the CHAP secret of one attachment."""
    return f"{SECRET_PREFIX}{instance_uuid}-{device}"


@dataclass(frozen=True)
class PreparedVolume:
    """A volume ready to go into a domain: its disk element and the secret made for it."""

    disk: xml.Disk
    secret_usage: str | None


class IscsiNativeVolumes:
    """Prepare and release iSCSI network disks for one libvirt host."""

    def __init__(self, connection: Connection, *, probe_timeout: float, driver_name: str = "libvirt") -> None:
        self._connection = connection
        self._timeout = probe_timeout
        self._driver = driver_name
        self._connector = IscsiConnector()

    @property
    def initiator(self) -> str:
        return self._connector.initiator

    @staticmethod
    def validate(block_device: BlockDevice) -> IscsiTarget:
        """Parse the connection_info; InvalidRequest naming the missing or bad field."""
        return parse_iscsi_target(block_device.connection)

    def prepare(self, instance: Instance, block_device: BlockDevice, *, cache: str | None) -> PreparedVolume:
        """Probe the LUN (typed errors for an unreachable portal or refused CHAP), make the secret."""
        target = self.validate(block_device)
        found = self._connector.probe(block_device.connection, timeout=self._timeout)
        host, _, port = found.path.rpartition(":")
        disk = xml.Disk(
            target_dev=block_device.device_name,
            target_bus=block_device.disk_bus or "virtio",
            source_type="network",
            protocol="iscsi",
            source_name=target.source_name,
            hosts=[(host.strip("[]"), int(port))],
            driver_type="raw",
            cache=cache,
            # QEMU logs in as this initiator, the one the probe used and the connector
            # reports: a target restricted to it would refuse QEMU's default name.
            initiator=self._connector.initiator,
            serial=(block_device.volume_id or None),
        )
        usage = None
        if target.uses_chap:
            usage = secret_usage(instance.uuid, block_device.device_name)
            self._define_secret(usage, target.auth_password or "")
            disk.auth_username = target.auth_username
            disk.secret_type = "iscsi"
            disk.secret_usage = usage
        return PreparedVolume(disk, usage)

    def _define_secret(self, usage: str, password: str) -> None:
        def define(conn: libvirt.virConnect) -> None:
            try:
                secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    raise UnsupportedOperation(
                        self._driver, "CHAP volumes",
                        reason=f"{self._connection.uri} has no secret driver") from None
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                    raise
                secret = conn.secretDefineXML(xml.Secret(usage, description=usage).to_xml())
            try:
                secret.setValue(password.encode())
            except libvirt.libvirtError:
                secret.undefine()
                raise

        try:
            self._connection.call(define)
        except libvirt.libvirtError as exc:
            # The message is libvirt's and never holds the value (it went through the API).
            raise VolumeError(f"cannot create the CHAP secret {usage}: "
                              f"{exc.get_error_message()}") from None

    def remove_secret(self, usage: str) -> None:
        """Undefine the secret with this usage id; a no-op if it is gone."""
        def undefine(conn: libvirt.virConnect) -> None:
            try:
                conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage).undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_ERR_NO_SUPPORT):
                    raise

        self._connection.call(undefine)

    def release(self, disks: list[xml.Disk]) -> None:
        """Remove the secrets virtkit made for these disks (others are not ours to remove)."""
        for disk in disks:
            if disk.secret_usage and disk.secret_usage.startswith(SECRET_PREFIX):
                try:
                    self.remove_secret(disk.secret_usage)
                except libvirt.libvirtError as exc:
                    LOG.warning("could not remove secret %s: %s", disk.secret_usage,
                                exc.get_error_message())

    def remove_instance_secrets(self, instance_uuid: str) -> None:
        """Remove every secret of this instance, including ones no domain references any more."""
        prefix = f"{SECRET_PREFIX}{instance_uuid}-"

        def sweep(conn: libvirt.virConnect) -> None:
            try:
                secrets = conn.listAllSecrets(libvirt.VIR_CONNECT_LIST_SECRETS_NO_EPHEMERAL)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return
                raise
            for secret in secrets:
                if (secret.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_ISCSI
                        and (secret.usageID() or "").startswith(prefix)):
                    secret.undefine()

        self._connection.call(sweep)


#: Seconds between repeated unplug requests while a guest has not released a disk.
DETACH_RESEND_INTERVAL = 2.0


def wait_detached(instance_uuid: str, block_device: BlockDevice, *, timeout: float,
                  live_devices: Callable[[], list[str | None]],
                  resend: Callable[[], None]) -> None:
    """Wait until the guest releases the disk, repeating the unplug request meanwhile.

    A guest that is still booting drops the hot-unplug request (ACPI) and never answers
    it; QEMU accepts the request again and a booted guest then releases at once.
    """
    started = time.monotonic()
    deadline = started + timeout
    resend_at = started + DETACH_RESEND_INTERVAL
    while time.monotonic() < deadline:
        if block_device.device_name not in live_devices():
            return
        if time.monotonic() >= resend_at:
            resend()
            resend_at = time.monotonic() + DETACH_RESEND_INTERVAL
        time.sleep(0.2)
    raise VolumeError(f"the guest {instance_uuid} did not release {block_device.mountpoint} "
                      f"within {timeout:g}s",
                      hint="it is removed from the configuration; retry or power off")
