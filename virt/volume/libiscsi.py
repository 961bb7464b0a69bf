"""READ CAPACITY(16) of an iSCSI LUN through libiscsi, called in this process.

The CHAP secret stays in this process: no child is started, so it is in no argv and no
environment (libiscsi's tools only take CHAP credentials from their environment).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

_SESSION_NORMAL = 2
_HEADER_DIGEST_NONE_CRC32C = 1
_SCSI_STATUS_GOOD = 0
_LIBRARY_NAMES = ("libiscsi.so.7", "libiscsi.so")


class LibIscsiError(Exception):
    """libiscsi failed; the message is libiscsi's own (it never holds the CHAP secret)."""


class _ReadCapacity16(ctypes.Structure):
    _fields_ = [("returned_lba", ctypes.c_uint64), ("block_length", ctypes.c_uint32)]


@dataclass(frozen=True)
class Capacity:
    size_bytes: int
    block_size: int


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """libiscsi, loaded once (LibIscsiError if it is not installed)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _load()
        return _lib


def available() -> bool:
    """Whether libiscsi can be loaded here."""
    try:
        library()
    except LibIscsiError:
        return False
    return True


def _load() -> ctypes.CDLL:
    names = [*_LIBRARY_NAMES, ctypes.util.find_library("iscsi")]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise LibIscsiError("libiscsi is not installed (apt-get install libiscsi7)")


def _declare(lib: ctypes.CDLL) -> None:
    ctx, text, integer = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[list[type], type | None]] = {
        "iscsi_create_context": ([text], ctx),
        "iscsi_destroy_context": ([ctx], integer),
        "iscsi_set_targetname": ([ctx, text], integer),
        "iscsi_set_session_type": ([ctx, integer], integer),
        "iscsi_set_header_digest": ([ctx, integer], integer),
        "iscsi_set_initiator_username_pwd": ([ctx, text, text], integer),
        "iscsi_set_timeout": ([ctx, integer], integer),
        "iscsi_set_tcp_syncnt": ([ctx, integer], integer),
        "iscsi_full_connect_sync": ([ctx, text, integer], integer),
        "iscsi_logout_sync": ([ctx], integer),
        "iscsi_get_error": ([ctx], text),
        "iscsi_readcapacity16_sync": ([ctx, integer], ctypes.c_void_p),
        "scsi_datain_unmarshall": ([ctypes.c_void_p], ctypes.c_void_p),
        "scsi_free_scsi_task": ([ctypes.c_void_p], None),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result


def read_capacity(*, initiator: str, portal: str, iqn: str, lun: int,
                  username: str | None = None, password: str | None = None,
                  timeout: float = 15.0) -> Capacity:
    """Log in to `iqn` at `portal` (with CHAP when a username is given), read LUN `lun`'s
    size, log out. Bounded by `timeout` (libiscsi's own timeout, and a watchdog)."""
    lib = library()
    result: list[Capacity | BaseException] = []

    def work() -> None:
        try:
            result.append(_read(lib, initiator, portal, iqn, lun, username, password, timeout))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    worker = threading.Thread(target=work, name="virtkit-libiscsi", daemon=True)
    worker.start()
    worker.join(timeout + 5.0)
    if not result:  # libiscsi ignored its timeout: the thread is abandoned, not waited for
        raise LibIscsiError(f"connect to {portal} did not finish within {timeout:g}s")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _read(lib: ctypes.CDLL, initiator: str, portal: str, iqn: str, lun: int,
          username: str | None, password: str | None, timeout: float) -> Capacity:
    ctx = lib.iscsi_create_context(initiator.encode())
    if not ctx:
        raise LibIscsiError("libiscsi could not create a context")
    try:
        lib.iscsi_set_targetname(ctx, iqn.encode())
        lib.iscsi_set_session_type(ctx, _SESSION_NORMAL)
        lib.iscsi_set_header_digest(ctx, _HEADER_DIGEST_NONE_CRC32C)
        lib.iscsi_set_timeout(ctx, max(1, round(timeout)))
        lib.iscsi_set_tcp_syncnt(ctx, 2)
        if username:
            lib.iscsi_set_initiator_username_pwd(ctx, username.encode(),
                                                 (password or "").encode())
        if lib.iscsi_full_connect_sync(ctx, portal.encode(), lun) != 0:
            raise LibIscsiError(_error(lib, ctx))
        try:
            return _capacity(lib, ctx, lun)
        finally:
            lib.iscsi_logout_sync(ctx)
    finally:
        lib.iscsi_destroy_context(ctx)


def _capacity(lib: ctypes.CDLL, ctx: int, lun: int) -> Capacity:
    task = lib.iscsi_readcapacity16_sync(ctx, lun)
    if not task:
        raise LibIscsiError(f"READ CAPACITY(16) failed: {_error(lib, ctx)}")
    try:
        if ctypes.cast(task, ctypes.POINTER(ctypes.c_int))[0] != _SCSI_STATUS_GOOD:
            raise LibIscsiError(f"READ CAPACITY(16) failed: {_error(lib, ctx)}")
        data = lib.scsi_datain_unmarshall(task)
        if not data:
            raise LibIscsiError("READ CAPACITY(16) returned no data")
        reply = ctypes.cast(data, ctypes.POINTER(_ReadCapacity16))[0]
        return Capacity((reply.returned_lba + 1) * reply.block_length, reply.block_length)
    finally:
        lib.scsi_free_scsi_task(task)


def _error(lib: ctypes.CDLL, ctx: int) -> str:
    message = lib.iscsi_get_error(ctx)
    return message.decode("utf-8", "replace") if message else "unknown libiscsi error"
