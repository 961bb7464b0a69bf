"""Inside an OS zone through `zlogin`: the admin password (`chpasswd`, `user:password` on its
stdin) and injected files (`mkdir -p`, then `tee` with the contents on its stdin). Nothing
secret is ever on a command line or in a log."""

from __future__ import annotations

import posixpath
import re

from drivers.smartos.commands import Tools
from virt.errors import InvalidRequest
from virt.model import Instance

CHPASSWD = "/usr/sbin/chpasswd"
MKDIR = "/usr/bin/mkdir"
TEE = "/usr/bin/tee"
#: Image property naming the user whose password set_admin_password changes.
ADMIN_USER_PROPERTY = "os_admin_user"

# zlogin hands its words to the zone's shell: paths are kept to characters it reads as such.
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@=-]*$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def admin_user(instance: Instance) -> str:
    user = (instance.image.properties.get(ADMIN_USER_PROPERTY) if instance.image else None)
    user = user or "root"
    if not _USER_RE.match(user):
        raise InvalidRequest(f"image property {ADMIN_USER_PROPERTY} {user!r} is not a user name")
    return user


def check_password(password: str) -> None:
    """InvalidRequest for a password chpasswd cannot take (never saying what it is)."""
    if not isinstance(password, str) or not password:
        raise InvalidRequest("the admin password must be a non-empty string")
    if any(ch in password for ch in "\n\r\0"):
        raise InvalidRequest("the admin password must not hold a newline or NUL character")


def validate_guest_path(path: str) -> str:
    """An absolute, normalised path inside the zone, of plain characters only."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidRequest(f"guest path {path!r} must be absolute")
    normal = posixpath.normpath(path)
    if normal == "/" or not _PATH_RE.match(normal) or normal != path.rstrip("/"):
        raise InvalidRequest(
            f"guest path {path!r} must be a normalised file path of letters, digits and "
            "._/+@=- only")
    return normal


def set_password(tools: Tools, uuid: str, *, ident: str, user: str, password: str) -> None:
    """`zlogin <uuid> chpasswd` with `user:password` on stdin."""
    with tools.translate("set the admin password", instance=ident):
        tools.zlogin(uuid, [CHPASSWD], stdin=f"{user}:{password}\n".encode(),
                     secrets=[password])


def write_file(tools: Tools, uuid: str, *, ident: str, path: str, contents: bytes) -> None:
    """`zlogin mkdir -p <dir>`, then `zlogin tee <path>` with the contents on stdin."""
    with tools.translate(f"write {path}", instance=ident):
        parent = posixpath.dirname(path)
        if parent != "/":
            tools.zlogin(uuid, [MKDIR, "-p", parent])
        tools.zlogin(uuid, [TEE, path], stdin=bytes(contents))
