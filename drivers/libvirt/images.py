"""Base-image cache and per-instance disks (qcow2 copy-on-write overlays).

A base image is copied once into `images_path`, keyed by its source path, inode, size and
mtime. Each instance gets a qcow2 overlay on it, grown to the flavor's root size, plus blank
ephemeral (ext4) and swap disks when the flavor asks for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from drivers.libvirt import qcow2, xml
from virt.driver.rollback import SpawnRollback
from virt.errors import ImageError, ImageNotFound, InvalidRequest
from virt.model import Flavor, ImageRef

LOG = logging.getLogger(__name__)
GIB = 1024**3
MIB = 1024**2
#: Bound on every qemu-img/mkfs run: a hung tool must not hang the driver.
TOOL_TIMEOUT = 600.0
_SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class CachedImage:
    """A file in the image cache."""

    path: str
    format: str
    virtual_size: int


def run_tool(argv: list[str], *, timeout: float = TOOL_TIMEOUT, what: str) -> str:
    """Run a disk tool with a bound; ImageError with its stderr when it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              close_fds=True, check=False)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from None
    except FileNotFoundError:
        raise ImageError(f"{what}: {argv[0]} is not installed",
                         hint="install qemu-utils and e2fsprogs") from None
    if proc.returncode != 0:
        raise ImageError(f"{what}: {argv[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


class ImageCache:
    """Base images copied once into `root`; safe across threads and processes."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._known: dict[str, CachedImage] = {}
        # (kind, path as given, device, inode, size, mtime) -> cached copy: a repeat spawn
        # from the same unchanged file costs one stat, not a realpath walk and a hash.
        self._by_stat: dict[tuple[str, str, int, int, int, int], CachedImage] = {}

    def fetch(self, source: str, declared_format: str | None = None) -> CachedImage:
        """The cached copy of the disk image `source`, copying it in on first use."""
        st = self._stat(source, "image")
        ident = ("image", source, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._by_stat.get(ident)
        if cached is not None:
            return cached
        key = self._key(source, st)
        cached = self._known.get(key)
        if cached is not None:
            self._by_stat[ident] = cached
            return cached
        with self._lock, self._file_lock():
            meta_path = self.root / f"{key}.json"
            if meta_path.exists():
                meta = json.loads(meta_path.read_text())
                cached = CachedImage(str(self.root / key), meta["format"], meta["virtual_size"])
            else:
                header = self._probe(source, declared_format)
                self._copy_in(source, self.root / key)
                cached = CachedImage(str(self.root / key), header.format, header.virtual_size)
                meta_path.write_text(json.dumps(
                    {"source": source, "format": cached.format,
                     "virtual_size": cached.virtual_size}))
            self._known[key] = cached
            self._by_stat[ident] = cached
            return cached

    def fetch_file(self, source: str, what: str) -> str:
        """The cached copy of a kernel or ramdisk file."""
        st = self._stat(source, what)
        ident = ("file", source, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._by_stat.get(ident)
        if cached is not None:
            return cached.path
        key = self._key(source, st)
        target = self.root / key
        if str(target) not in self._known:
            with self._lock, self._file_lock():
                if not target.exists():
                    self._copy_in(source, target)
            self._known[str(target)] = CachedImage(str(target), "raw", st.st_size)
        self._by_stat[ident] = self._known[str(target)]
        return str(target)

    @staticmethod
    def _stat(source: str, what: str) -> os.stat_result:
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise ImageNotFound(f"{what} file {source} does not exist",
                                hint="give the path of a local qcow2 or raw file") from None
        except OSError as exc:
            raise ImageError(f"{what} file {source} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{what} {source} is not a regular file")
        return st

    @staticmethod
    def _key(source: str, st: os.stat_result) -> str:
        ident = f"{os.path.realpath(source)}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]

    @staticmethod
    def _probe(source: str, declared: str | None) -> qcow2.ImageHeader:
        if declared not in (None, "qcow2", "raw", "ami"):
            raise ImageError(f"image {source}: disk_format {declared!r} cannot be booted by libvirt",
                             hint="use a qcow2 or raw image")
        try:
            header = qcow2.read_header(source)
        except OSError as exc:
            raise ImageError(f"image {source} cannot be read: {exc.strerror}") from None
        if declared in ("raw", "ami"):
            # Trust the declared format: probing a raw image can be fooled by its contents.
            st = os.stat(source)
            return qcow2.ImageHeader("raw", st.st_size)
        if declared == "qcow2" and header.format != "qcow2":
            raise ImageError(f"image {source} is declared qcow2 but has no qcow2 header")
        if header.backing_file:
            raise ImageError(f"image {source} has a backing file; a base image must stand alone",
                             hint="flatten it with qemu-img convert")
        return header

    def _copy_in(self, source: str, target: Path) -> None:
        tmp = target.with_name(target.name + f".part.{os.getpid()}.{threading.get_ident()}")
        try:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ImageError(f"cannot copy {source} into the image cache {self.root}: "
                             f"{exc.strerror}") from None

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


@dataclass(frozen=True)
class InstanceDisks:
    """The files of one instance, under its own directory."""

    directory: str
    root: str
    ephemeral: str | None = None
    swap: str | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    #: Files this spawn made (its rollback has an undo for each, and for nothing else).
    created: tuple[str, ...] = ()
    #: Whether this spawn made the directory itself (its rollback then removes all of it).
    made_directory: bool = True

    @property
    def console_log(self) -> str:
        return os.path.join(self.directory, "console.log")


def instance_dir(instances_path: str, uuid: str) -> str:
    return os.path.join(instances_path, uuid)


def root_disk_path(instances_path: str, uuid: str) -> str:
    return os.path.join(instance_dir(instances_path, uuid), "disk")


def create_instance_disks(
    cache: ImageCache, instances_path: str, uuid: str, image: ImageRef, flavor: Flavor, *,
    rollback: SpawnRollback,
) -> InstanceDisks:
    """Cache the image, then create the instance directory and its disks.

    Disks already in the directory (shared instance storage: an instance recovered on
    another host) are reused when valid, never overwritten. An undo is pushed on `rollback`
    right after each directory or file this call creates, and for nothing that was there.
    """
    base = cache.fetch(image.ref, image.disk_format)
    kernel = cache.fetch_file(image.kernel, "kernel") if image.kernel else None
    ramdisk = cache.fetch_file(image.ramdisk, "ramdisk") if image.ramdisk else None
    size = _root_size(base, flavor, image)
    directory = instance_dir(instances_path, uuid)
    made_directory = _make_directory(instances_path, directory)
    if made_directory:
        rollback.push(f"instance directory {directory}", lambda: remove_instance_dir(directory))
    created: list[str] = []
    root = root_disk_path(instances_path, uuid)
    if made_directory or not _reusable_root(uuid, root):
        _make(rollback, created, root, lambda p: qcow2.write_overlay(
            p, backing_file=base.path, backing_format=base.format, size=size))
    ephemeral = swap = kernel_copy = ramdisk_copy = None
    if flavor.ephemeral_gb:
        ephemeral = _keep_or_make(rollback, created, os.path.join(directory, "disk.eph0"),
                                  lambda p: _blank_disk(p, flavor.ephemeral_gb * GIB, "ext4"))
    if flavor.swap_mb:
        swap = _keep_or_make(rollback, created, os.path.join(directory, "disk.swap"),
                             lambda p: _blank_disk(p, flavor.swap_mb * MIB, "swap"))
    if kernel:
        kernel_copy = _keep_or_make(rollback, created, os.path.join(directory, "kernel"),
                                    lambda p: shutil.copyfile(kernel, p))
    if ramdisk:
        ramdisk_copy = _keep_or_make(rollback, created, os.path.join(directory, "ramdisk"),
                                     lambda p: shutil.copyfile(ramdisk, p))
    return InstanceDisks(directory=directory, root=root, ephemeral=ephemeral, swap=swap,
                         kernel=kernel_copy, ramdisk=ramdisk_copy, created=tuple(created),
                         made_directory=made_directory)


def _root_size(base: CachedImage, flavor: Flavor, image: ImageRef) -> int:
    if not flavor.root_gb:
        return base.virtual_size
    if flavor.root_gb * GIB < base.virtual_size:
        raise InvalidRequest(
            f"flavor {flavor.name} has root_gb={flavor.root_gb}, smaller than image "
            f"{image.ref} ({base.virtual_size} bytes)",
            hint="choose a flavor with a larger root disk",
        )
    return flavor.root_gb * GIB


def _make_directory(instances_path: str, directory: str) -> bool:
    """Create the instance directory; False if it was already there."""
    try:
        os.mkdir(directory, 0o711)
        return True
    except FileNotFoundError:
        os.makedirs(instances_path, mode=0o711, exist_ok=True)
        os.mkdir(directory, 0o711)
        return True
    except FileExistsError:
        if not os.path.isdir(directory):
            raise ImageError(f"{directory} exists and is not a directory") from None
        return False


def _reusable_root(uuid: str, root: str) -> bool:
    """True if an earlier root disk is there and usable; ImageError if it is there but not.

    A disk that cannot be used is reported, never replaced: it may hold the only copy of
    the instance's data.
    """
    try:
        header = qcow2.read_header(root)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ImageError(f"instance {uuid}: its existing root disk {root} cannot be read: "
                         f"{exc.strerror}", hint="repair or remove it; virtkit leaves it as is"
                         ) from None
    if header.format != "qcow2":
        raise ImageError(f"instance {uuid}: its existing root disk {root} is not qcow2",
                         hint="repair or remove it; virtkit leaves it as is")
    if header.backing_file:
        backing = os.path.join(os.path.dirname(root), header.backing_file)
        if not os.path.isfile(backing):
            raise ImageError(
                f"instance {uuid}: its existing root disk {root} is backed by "
                f"{header.backing_file}, which is not reachable from this host",
                hint="make the image cache reachable at that path (shared images_path) "
                "or rebase the disk; virtkit leaves it as is")
    LOG.info("instance %s: reusing its existing root disk %s (backing file %s)", uuid, root,
             header.backing_file or "none")
    return True


def _make(rollback: SpawnRollback, created: list[str], path: str,
          make: Callable[[str], object]) -> str:
    """`make(path)`, then an undo for the file (pushed too when `make` fails half-way)."""
    try:
        make(path)
    except BaseException:
        rollback.push(f"partial disk file {path}", lambda: _unlink(path))
        raise
    created.append(path)
    rollback.push(f"disk file {path}", lambda: _unlink(path))
    return path


def _keep_or_make(rollback: SpawnRollback, created: list[str], path: str,
                  make: Callable[[str], object]) -> str:
    """`path` if it already exists (reused), else made by `make` with an undo pushed."""
    if os.path.exists(path):
        LOG.info("reusing the existing %s", path)
        return path
    return _make(rollback, created, path, make)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _blank_disk(path: str, size: int, fs: str) -> None:
    """A sparse raw file formatted as `fs` (ext4 for ephemeral, swap)."""
    with open(path, "wb") as f:
        f.truncate(size)
    if fs == "swap":
        run_tool(["mkswap", "-L", "swap0", path], what="making the swap disk")
    else:
        run_tool(["mkfs.ext4", "-q", "-F", "-L", "ephemeral0",
                  "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path],
                 what="formatting the ephemeral disk")


def remove_instance_dir(directory: str) -> None:
    """Remove an instance's directory and everything in it; a no-op if it is gone."""
    # Usual case first: the root disk and the console log, then the directory (3 system
    # calls); a directory holding more (ENOTEMPTY) is scanned below.
    for name in ("disk", "console.log"):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        except OSError:
            break
    try:
        os.rmdir(directory)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        return
    # The directory holds plain files (disks, logs): unlink them directly instead of
    # rmtree's descriptor walk, which costs several times as many system calls.
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)


def snapshot_disk(disk: str, images_path: str, name: str) -> ImageRef:
    """Flatten `disk` (overlay + base) into a standalone qcow2 image named `name`."""
    if not _SNAPSHOT_NAME_RE.match(name):
        raise InvalidRequest(f"snapshot name {name!r} is invalid",
                             hint="use letters, digits, '.', '_' or '-'")
    target_dir = os.path.join(images_path, "snapshots")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{name}.qcow2")
    if os.path.exists(target):
        raise InvalidRequest(f"snapshot {name} already exists at {target}",
                             hint="choose another name")
    tmp = target + ".part"
    try:
        run_tool(["qemu-img", "convert", "-U", "-O", "qcow2", disk, tmp],
                 what=f"snapshot {name}")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return ImageRef(ref=target, disk_format="qcow2")


def snapshot_ref(ref: ImageRef, boot: xml.Os, name: str) -> ImageRef:
    """The snapshot image `ref` with copies of the kernel and ramdisk `boot` names."""
    kernel = ramdisk = None
    target_dir = os.path.dirname(ref.ref)
    if boot.kernel:
        kernel = os.path.join(target_dir, f"{name}.kernel")
        shutil.copyfile(boot.kernel, kernel)
    if boot.initrd:
        ramdisk = os.path.join(target_dir, f"{name}.ramdisk")
        shutil.copyfile(boot.initrd, ramdisk)
    return ImageRef(ref=ref.ref, disk_format="qcow2", kernel=kernel, ramdisk=ramdisk,
                    kernel_cmdline=boot.cmdline)


def read_tail(path: str, limit: int) -> str:
    """The last `limit` bytes of a log file as text; "" if it does not exist (yet)."""
    try:
        with open(path, "rb") as log:
            size = os.fstat(log.fileno()).st_size
            log.seek(max(0, size - limit))
            return log.read(limit).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""  # never started: no output yet
