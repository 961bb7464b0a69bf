"""Helpers for the GlusterFS tests: the test bed's volume, files on it, block devices for them.

Files are made through the test bed's FUSE mount (a local qemu-img or truncate: each
qemu-img on a gluster:// URL lingers ~10 s in libgfapi's tear-down), and QEMU then reaches
them natively. Names are unique per test run; `files` removes what it made.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.testbed import env, require
from virt.model import BlockDevice, VolumeConnection

LIBVIRTD_PIDFILE = "/run/libvirtd.pid"


def gluster_export() -> str:
    """The test bed's volume as an export, 'host:/volume'."""
    return env("VIRTKIT_TEST_GLUSTER_VOLUME")


def gluster_mount() -> Path:
    """The test bed's FUSE mount of that volume."""
    path = Path(env("VIRTKIT_TEST_GLUSTER_MOUNT"))
    require(os.path.ismount(path), f"the GlusterFS mount at {path}")
    return path


def connection_info(name: str, *, fmt: str = "raw", **data: object) -> dict[str, object]:
    """Nova's glusterfs connection_info for the file `name` on the test bed's volume."""
    return {"driver_volume_type": "glusterfs", "serial": f"gl-{name}",
            "data": {"export": gluster_export(), "name": name, "format": fmt, **data}}


def gluster_device(name: str, mountpoint: str, *, fmt: str = "raw", **data: object) -> BlockDevice:
    return BlockDevice(VolumeConnection.from_connection_info(
        connection_info(name, fmt=fmt, **data)), mountpoint, volume_id=f"gl-{name}")


class Files:
    """Volume files on the test bed's Gluster volume, removed when done."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.made: list[Path] = []

    def create(self, size_mb: int, *, fmt: str = "raw", prefix: str = "vol") -> str:
        """A new file of `size_mb` MiB (raw or qcow2); returns its name in the volume."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}.{fmt}"
        path = self.mount / name
        if fmt == "raw":
            with open(path, "wb") as handle:
                handle.truncate(size_mb << 20)
        else:
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mb}M"],
                           check=True, timeout=60)
            # QEMU's gluster driver fails a short read at the end of a file (EIO): a fresh
            # qcow2's last table ends mid-cluster, so pad it to whole 64 KiB clusters.
            size = path.stat().st_size
            os.truncate(path, -(-size // 65536) * 65536)
        path.chmod(0o666)  # as Cinder's GlusterFS driver leaves it: QEMU's user opens it
        self.made.append(path)
        return name

    def cleanup(self) -> None:
        for path in self.made:
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def volume_files() -> Iterator[Files]:
    files = Files(gluster_mount())
    try:
        yield files
    finally:
        files.cleanup()


def libvirtd_namespace_pidfile() -> str:
    """libvirtd's pid file when it runs in a mount namespace other than ours (the test bed
    hides /dev/kvm that way): FUSE mounts must be made there for QEMU to see them."""
    try:
        pid = Path(LIBVIRTD_PIDFILE).read_text().strip()
        theirs = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""
    return LIBVIRTD_PIDFILE if theirs != os.readlink("/proc/self/ns/mnt") else ""


def in_qemu_namespace(argv: list[str]) -> list[str]:
    """`argv` run in libvirtd's mount namespace when it has its own: through the mount QEMU
    uses (two FUSE clients of one volume do not share a page cache)."""
    pidfile = libvirtd_namespace_pidfile()
    if not pidfile:
        return argv
    return ["nsenter", "-t", Path(pidfile).read_text().strip(), "-m", *argv]
