"""Read a disk image's format header, and write empty qcow2 overlays without a subprocess.

An overlay that holds no data yet is only a header, a refcount table and block and an empty
L1 table: writing it in-process takes microseconds where `qemu-img create` takes ~7 ms, which
matters when a host spawns hundreds of guests. The layout is the one `qemu-img create -f
qcow2 -b BASE -F FMT` produces (qcow2 version 3, 64 KiB clusters, 16-bit refcounts); the
tests check every overlay with `qemu-img check` and boot guests from them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
_HEADER_V3 = ">4sIQIIQIIQQIIQQQQII"  # up to and including header_length: 104 bytes
_HEADER_LEN = struct.calcsize(_HEADER_V3)
_EXT_BACKING_FORMAT = 0xE2792ACA
_L2_ENTRIES = CLUSTER // 8
_REFCOUNTS_PER_BLOCK = CLUSTER // 2


@dataclass(frozen=True)
class ImageHeader:
    """What the first bytes of an image say about it."""

    format: str
    virtual_size: int
    backing_file: str | None = None


def read_header(path: str) -> ImageHeader:
    """Probe `path`: qcow2 (virtual size and backing file from its header) or raw."""
    with open(path, "rb") as f:
        head = f.read(CLUSTER)
        size = os.fstat(f.fileno()).st_size
    if len(head) < 72 or head[:4] != MAGIC:
        return ImageHeader("raw", size)
    backing_offset, backing_len = struct.unpack(">QI", head[8:20])
    virtual_size = struct.unpack(">Q", head[24:32])[0]
    backing = None
    if backing_offset:
        with open(path, "rb") as f:
            f.seek(backing_offset)
            backing = f.read(backing_len).decode("utf-8", "replace")
    return ImageHeader("qcow2", virtual_size, backing)


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def write_overlay(path: str, *, backing_file: str, backing_format: str, size: int) -> None:
    """Create a new, empty qcow2 file at `path` of `size` bytes backed by `backing_file`.

    Fails with FileExistsError rather than overwrite an existing file.
    """
    backing = backing_file.encode()
    l1_size = max(1, -(-size // (CLUSTER * _L2_ENTRIES)))
    l1_clusters = -(-(l1_size * 8) // CLUSTER)
    refcount_table = CLUSTER
    refcount_block = 2 * CLUSTER
    l1_table = 3 * CLUSTER
    total_clusters = 3 + l1_clusters
    if total_clusters > _REFCOUNTS_PER_BLOCK:
        raise ValueError(f"virtual size {size} is too large for an overlay")

    extensions = struct.pack(">II", _EXT_BACKING_FORMAT, len(backing_format))
    extensions += _pad8(backing_format.encode())
    extensions += struct.pack(">II", 0, 0)
    backing_offset = _HEADER_LEN + len(extensions)
    if backing_offset + len(backing) > CLUSTER:
        raise ValueError("backing file path is too long for a qcow2 header")
    header = struct.pack(
        _HEADER_V3,
        MAGIC,
        3,  # version
        backing_offset,
        len(backing),
        CLUSTER_BITS,
        size,
        0,  # crypt_method
        l1_size,
        l1_table,
        refcount_table,
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        4,  # refcount_order: 16-bit refcounts
        _HEADER_LEN,
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.pwrite(fd, header + extensions + backing, 0)
        os.pwrite(fd, struct.pack(">Q", refcount_block), refcount_table)
        os.pwrite(fd, struct.pack(">H", 1) * total_clusters, refcount_block)
        os.ftruncate(fd, total_clusters * CLUSTER)  # the L1 table: zeros, sparse
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
