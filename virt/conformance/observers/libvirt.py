"""libvirt seen from outside the libvirt driver: its own connection, the domain's live XML,
the serial log and the disk files it names, read with libvirt-python, lxml and qemu-io.

A boot is counted by the guest's `[conformance] console_marker` in the serial log the domain
writes (append mode, so every boot adds one), which libvirt's test driver does not have: on
`test:///` the boot and clock probes are not observed. A Xen PV guest has no serial port: its
console is the log dom0's xenconsoled appends to, `guest-<name>.log` in `[libvirt]
xen_console_dir`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any
from xml.sax.saxutils import escape

import libvirt
from lxml import etree

from virt.conformance.observers import NotObserved, Observer
from virt.model import Flavor, Instance, PowerState, new_uuid

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
}
MARK_OFFSET = 1 << 20
MARK_LENGTH = 64 << 10
TOOL_TIMEOUT = 60


def _silence(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; the probes expect some."""


class LibvirtObserver(Observer):
    """Its own libvirt connection to the driver's URI."""

    name = "libvirt"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._conn: libvirt.virConnect | None = None

    @property
    def uri(self) -> str:
        return str(self.settings.conf.libvirt.connection_uri)

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            libvirt.registerErrorHandler(_silence, None)
            self._conn = libvirt.open(self.uri)
        return self._conn

    def _domain(self, instance: Instance) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(instance.uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _must(self, instance: Instance) -> libvirt.virDomain:
        dom = self._domain(instance)
        if dom is None:
            raise AssertionError(f"libvirt has no domain of instance {instance.uuid}")
        return dom

    def _xml(self, instance: Instance) -> etree._Element:
        return etree.fromstring(self._must(instance).XMLDesc(0))

    def _disks(self, instance: Instance) -> list[etree._Element]:
        return self._xml(instance).findall("devices/disk[@device='disk']")

    def _root_file(self, instance: Instance) -> str:
        for disk in self._disks(instance):
            target = disk.find("target")
            source = disk.find("source")
            if target is not None and target.get("dev") in ("vda", "sda", "xvda", "hda") \
                    and source is not None and source.get("file"):
                return str(source.get("file"))
        raise AssertionError(f"the domain of {instance.uuid} has no root disk file")

    # -- the engine object --------------------------------------------------------------------

    def exists(self, instance: Instance) -> bool:
        return self._domain(instance) is not None

    def power_state(self, instance: Instance) -> PowerState:
        dom = self._must(instance)
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
            return PowerState.SUSPENDED
        return _STATES.get(state, PowerState.UNKNOWN)

    def _serial_log(self, instance: Instance) -> str:
        root = self._xml(instance)
        if root.get("type") == "xen":  # xenconsoled's log of the PV console
            return os.path.join(str(self.settings.conf.libvirt.xen_console_dir),
                                f"guest-{root.findtext('name')}.log")
        source = root.find("devices/serial[@type='file']/source")
        if source is None or not source.get("path"):
            raise NotObserved("the domain writes no serial log (libvirt's test driver)")
        return str(source.get("path"))

    def _console_text(self, instance: Instance) -> str:
        path = self._serial_log(instance)
        try:
            with open(path, "rb") as handle:
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def boot_id(self, instance: Instance) -> str:
        marker = self.settings.opts.console_marker
        if not marker:
            raise NotObserved("[conformance] console_marker is unset: no boot to count")
        return f"boot {self._console_text(instance).count(marker)}"

    def clock(self, instance: Instance) -> float:
        if self.uri.startswith("test:"):
            raise NotObserved("libvirt's test driver runs no guest clock")
        return float(self._must(instance).info()[4])  # the vCPUs' time, in ns

    def console_has(self, instance: Instance, marker: str) -> bool:
        return marker in self._console_text(instance)

    def leftovers(self, instance: Instance) -> list[str]:
        left = []
        if self._domain(instance) is not None:
            left.append(f"libvirt domain {instance.uuid}")
        directory = os.path.join(self.settings.conf.instances_path, instance.uuid)
        if os.path.exists(directory):
            left.append(directory)
        with contextlib.suppress(libvirt.libvirtError):
            for secret in self.conn.listAllSecrets(0):
                if instance.uuid in (secret.usageID() or ""):
                    left.append(f"libvirt secret {secret.usageID()}")
        return left

    # -- disks and volumes ------------------------------------------------------------------

    def mark_disk(self, instance: Instance) -> str:
        pattern = secrets.randbelow(254) + 1
        _qemu_io(self._root_file(instance),
                 f"write -P {pattern} {MARK_OFFSET} {MARK_LENGTH}")
        return str(pattern)

    def disk_has_mark(self, instance: Instance, token: str) -> bool:
        out = _qemu_io(self._root_file(instance),
                       f"read -P {token} {MARK_OFFSET} {MARK_LENGTH}", read_only=True,
                       check=False)
        return "Pattern verification failed" not in out and "read " in out

    def original_disk_attached(self, instance: Instance) -> bool:
        own = os.path.join(self.settings.conf.instances_path, instance.uuid)
        return any((d.find("source") is not None
                    and str(d.find("source").get("file", "")).startswith(own))
                   for d in self._disks(instance))

    def volumes(self, instance: Instance) -> Mapping[str, str]:
        found = {}
        for disk in self._xml(instance).findall("devices/disk"):
            source, target = disk.find("source"), disk.find("target")
            if source is None or target is None or disk.get("type") != "network":
                continue
            found[f"/dev/{target.get('dev')}"] = str(source.get("name"))
        return found

    def vifs(self, instance: Instance) -> list[str]:
        return [str(mac.get("address")).lower()
                for mac in self._xml(instance).findall("devices/interface/mac")]

    # -- objects of others ------------------------------------------------------------------

    @contextlib.contextmanager
    def foreign_instance(self) -> Iterator[Instance]:
        """A domain defined and started through this observer's own connection, without
        virtkit's metadata: a guest with no disk that sits in its firmware (on the test
        driver, a running domain record; on Xen, a diskless PV guest booting the suite's
        kernel)."""
        uuid = new_uuid()
        name = f"foreign-{uuid[:8]}"
        with contextlib.ExitStack() as stack:
            if self.conn.getType() == "Xen":
                flavor, domain_xml = self._foreign_pv(stack, uuid, name)
            else:
                # Much more memory than its firmware touches: were it counted, the use would
                # grow by it all; as host memory in use, it grows by what QEMU's process holds.
                flavor = Flavor("foreign", 2, 1024)
                kind = "test" if self.uri.startswith("test:") else "qemu"
                domain_xml = (
                    f"<domain type='{kind}'><name>{name}</name><uuid>{uuid}</uuid>"
                    f"<memory unit='MiB'>{flavor.memory_mb}</memory><vcpu>{flavor.vcpus}"
                    "</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")
            dom = self.conn.defineXML(domain_xml)
            stack.callback(_quietly, dom.undefine)
            stack.callback(_quietly, dom.destroy)
            dom.create()
            yield Instance(uuid=uuid, name=name, flavor=flavor)

    def _foreign_pv(self, stack: contextlib.ExitStack, uuid: str,
                    name: str) -> tuple[Flavor, str]:
        """A diskless Xen PV guest booting `[conformance] image_kernel` (and ramdisk), copied
        under state_path, which dom0 reads at the same path as the driver's files."""
        opts = self.settings.opts
        if not opts.image_kernel:
            raise NotObserved("[conformance] image_kernel is unset: no PV guest to boot")
        directory = os.path.join(self.settings.conf.state_path, f"conformance-{name}")
        os.makedirs(directory, exist_ok=True)
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        boot = {}
        for tag, source in (("kernel", opts.image_kernel), ("initrd", opts.image_ramdisk)):
            if source:
                boot[tag] = shutil.copyfile(source, os.path.join(directory, tag))
        # Xen gives a PV guest all its memory at once: small, for the nested test bed.
        flavor = Flavor("foreign", 2, 128)
        os_xml = "".join(f"<{tag}>{escape(path)}</{tag}>" for tag, path in boot.items())
        return flavor, (
            f"<domain type='xen'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory unit='MiB'>{flavor.memory_mb}</memory><vcpu>{flavor.vcpus}</vcpu>"
            f"<os><type arch='x86_64' machine='xenpv'>xen</type>{os_xml}"
            f"<cmdline>{escape(opts.image_cmdline or 'console=hvc0')}</cmdline></os></domain>")


def _quietly(call: Any) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        call()


def _qemu_io(path: str, command: str, *, read_only: bool = False, check: bool = True) -> str:
    # -U (force share): the disk may be open by a running QEMU; reading it is still sound
    # for a region the guest does not write.
    argv = ["qemu-io", "-f", "qcow2", *(["-r", "-U"] if read_only else []), "-c", command, path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"qemu-io {command!r} on {path} failed: {done.stderr.strip()}")
    return done.stdout + done.stderr
