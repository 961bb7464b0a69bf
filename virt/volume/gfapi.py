"""Probe one file on a Gluster volume through libgfapi; run as a script in a child process.

    python gfapi.py VOLUME PATH HOST:PORT [HOST:PORT ...]

prints one JSON line: {"size": N, "header": "<hex of the first 32 bytes>"} or
{"error": "load"|"init"|"open"|"read", "errno": N}. Standard library only (ctypes), and run
by file path, so it imports nothing of virtkit. The child leaves with os._exit: libgfapi's
tear-down (glfs_fini) takes ~10 s, and the kernel closes the sockets just as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

HEADER_BYTES = 32
SEEK_END = 2


def _report(result: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("gfapi") or "libgfapi.so.0", use_errno=True)
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.glfs_new.restype, lib.glfs_new.argtypes = vp, [cp]
    lib.glfs_set_volfile_server.argtypes = [vp, cp, cp, i]
    lib.glfs_set_logging.argtypes = [vp, cp, i]
    lib.glfs_init.argtypes = [vp]
    lib.glfs_open.restype, lib.glfs_open.argtypes = vp, [vp, cp, i]
    lib.glfs_lseek.restype, lib.glfs_lseek.argtypes = ctypes.c_int64, [vp, ctypes.c_int64, i]
    lib.glfs_pread.restype = ctypes.c_ssize_t
    lib.glfs_pread.argtypes = [vp, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, i, vp]
    return lib


def main(argv: list[str]) -> None:
    volume, path, servers = argv[0], argv[1], argv[2:]
    try:
        lib = _load()
    except OSError:
        _report({"error": "load", "errno": 0})
    fs = lib.glfs_new(volume.encode())
    if not fs:
        _report({"error": "init", "errno": ctypes.get_errno()})
    for server in servers:
        host, _, port = server.rpartition(":")
        lib.glfs_set_volfile_server(fs, b"tcp", host.strip("[]").encode(), int(port))
    lib.glfs_set_logging(fs, b"/dev/null", 0)
    if lib.glfs_init(fs) != 0:
        _report({"error": "init", "errno": ctypes.get_errno()})
    fd = lib.glfs_open(fs, ("/" + path).encode(), os.O_RDONLY)
    if not fd:
        _report({"error": "open", "errno": ctypes.get_errno()})
    size = lib.glfs_lseek(fd, 0, SEEK_END)
    buf = ctypes.create_string_buffer(HEADER_BYTES)
    got = lib.glfs_pread(fd, buf, HEADER_BYTES, 0, 0, None)
    if size < 0 or got < 0:
        _report({"error": "read", "errno": ctypes.get_errno()})
    _report({"size": size, "header": buf.raw[:got].hex()})


if __name__ == "__main__":
    main(sys.argv[1:])
