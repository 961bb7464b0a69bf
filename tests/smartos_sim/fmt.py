"""Output formats shared by the tools: vmadm's list table and filters, JSON, sizes."""

from __future__ import annotations

import json
import re
from typing import Any

from .state import SimError

# vmadm list: field -> (HEADER, width)
LIST_FIELDS: dict[str, tuple[str, int]] = {
    "uuid": ("UUID", 36), "type": ("TYPE", 4), "ram": ("RAM", 7), "state": ("STATE", 16),
    "zone_state": ("ZONE_STATE", 10), "alias": ("ALIAS", 10), "brand": ("BRAND", 14),
    "image_uuid": ("IMAGE_UUID", 36), "vcpus": ("VCPUS", 5), "quota": ("QUOTA", 5),
    "cpu_cap": ("CPU_CAP", 7), "cpu_shares": ("CPU_SHARE", 9),
    "max_physical_memory": ("MAX_PHYS", 8), "max_swap": ("MAX_SWAP", 8),
    "max_locked_memory": ("MAX_LOCKED", 10), "max_lwps": ("MAX_LWPS", 8),
    "autoboot": ("AUTOBOOT", 8), "hostname": ("HOSTNAME", 32), "owner_uuid": ("OWNER_UUID", 36),
    "billing_id": ("BILLING_ID", 36), "zonename": ("ZONENAME", 12),
    "zonepath": ("ZONEPATH", 40), "zoneid": ("ZONEID", 6), "pid": ("PID", 6),
    "create_timestamp": ("CREATE_TIMESTAMP", 24), "boot_timestamp": ("BOOT_TIMESTAMP", 24),
    "last_modified": ("LAST_MODIFIED", 24), "zpool": ("ZPOOL", 12), "hvm": ("HVM", 5),
    "docker": ("DOCKER", 6), "cpu_type": ("CPU_TYPE", 8), "dns_domain": ("DOMAIN", 32),
    "zfs_io_priority": ("IO_PRIORITY", 11), "tmpfs": ("TMPFS", 5),
    "zfs_filesystem": ("ZFS_FILESYSTEM", 36), "firewall_enabled": ("FIREWALL_ENABLED", 16),
    "do_not_inventory": ("DO_NOT_INVENTORY", 16), "server_uuid": ("SERVER_UUID", 36),
    "platform_buildstamp": ("PLATFORM_BUILDSTAMP", 20), "exit_status": ("EXIT_STATUS", 11),
    "exit_timestamp": ("EXIT_TIMESTAMP", 24), "init_restarts": ("INIT_RESTARTS", 13),
    "zonedid": ("ZONEDID", 7), "transition_to": ("TRANSITION_TO", 13),
    "transition_expire": ("TRANSITION_EXPIRE", 17), "kernel_version": ("KERNEL_VERSION", 14),
}
NESTED_PREFIXES = ("nics.", "disks.", "tags.", "customer_metadata.", "internal_metadata.",
                   "filesystems.", "routes.")
DEFAULT_COLUMNS = ["uuid", "type", "ram", "state", "alias"]
DEFAULT_SORT = ["ram", "uuid"]
NUMERIC = {"ram", "vcpus", "quota", "cpu_cap", "cpu_shares", "max_physical_memory", "max_swap",
           "max_locked_memory", "max_lwps", "zoneid", "pid", "zfs_io_priority", "tmpfs",
           "zonedid", "init_restarts", "exit_status"}


def dumps(obj: Any) -> str:
    """JSON as vmadm/imgadm print it: JSON.stringify(obj, null, 2)."""
    return json.dumps(obj, indent=2, ensure_ascii=False)


def scalar(value: Any) -> str:
    """A value as a list column or filter sees it (JS String() of it)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def lookup_path(obj: Any, key: str) -> Any:
    """`nics.0.ip`, `tags.foo`: a nested member, or None."""
    cur = obj
    for part in key.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def valid_key(key: str, *, column: bool) -> bool:
    if key in LIST_FIELDS:
        return True
    if any(key.startswith(p) and len(key) > len(p) for p in NESTED_PREFIXES):
        return column is False or ".*." not in key
    return False


def parse_filters(args: list[str], known: set[str]) -> list[tuple[str, str, str]]:
    """`key=value` / `key=~regex` arguments: (key, op, value); bad keys are errors."""
    filters = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SimError(f"Invalid filter: \"{arg}\"", 1)
        op = "="
        if value.startswith("~"):
            op, value = "~", value[1:]
            try:
                re.compile(value)
            except re.error:
                raise SimError(f"Invalid regular expression: \"{value}\"", 1) from None
        if not (key in known or valid_key(key, column=False)):
            raise SimError(f"Invalid filter key: \"{key}\"", 1)
        filters.append((key, op, value))
    return filters


def _values(obj: dict[str, Any], key: str) -> list[Any]:
    if ".*." in key:
        head, _, tail = key.partition(".*.")
        items = lookup_path(obj, head)
        return [lookup_path(i, tail) for i in items] if isinstance(items, list) else []
    return [lookup_path(obj, key)]


def matches(obj: dict[str, Any], filters: list[tuple[str, str, str]]) -> bool:
    """All filters hold (string equality after flattening, or a regex search)."""
    for key, op, want in filters:
        values = [scalar(v) for v in _values(obj, key) if v is not None]
        if op == "=":
            if want not in values:
                return False
        elif not any(re.search(want, v) for v in values):
            return False
    return True


def parse_fields(spec: str, what: str) -> list[str]:
    fields = [f for f in spec.split(",") if f]
    for field in fields:
        bare = field.lstrip("+-") if what == "sort" else field
        if not valid_key(bare, column=True):
            if what == "sort":
                raise SimError(f"invalid sort field: {bare}", 1)
            raise SimError(f"Invalid order key: \"{field}\"", 1)
    return fields


def sort_rows(rows: list[dict[str, Any]], fields: list[str]) -> list[dict[str, Any]]:
    """Sort by the fields in turn, numbers as numbers; `-field` descending."""
    for field in reversed(fields):
        desc = field.startswith("-")
        key = field.lstrip("+-")

        def sort_key(row: dict[str, Any], key: str = key) -> tuple[int, Any]:
            value = lookup_path(row, key)
            if value is None:
                return (0, "")
            if isinstance(value, bool):
                return (1, scalar(value))
            if isinstance(value, int | float):
                return (2, value)
            return (1, scalar(value))
        rows = sorted(rows, key=sort_key, reverse=desc)
    return rows


def table(rows: list[dict[str, Any]], columns: list[str], *, parsable: bool,
          header: bool) -> str:
    """vmadm list's output: padded columns with a header, or `:`-joined parsable rows."""
    lines = []
    if parsable:
        for row in rows:
            lines.append(":".join(scalar(lookup_path(row, c)) for c in columns))
        return "".join(line + "\n" for line in lines)
    widths = [LIST_FIELDS.get(c, (c.upper(), 20))[1] for c in columns]
    if header:
        names = [LIST_FIELDS.get(c, (c.upper(), 20))[0] for c in columns]
        lines.append("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip())
    for row in rows:
        cells = []
        for column, width in zip(columns, widths, strict=True):
            value = lookup_path(row, column)
            text = "-" if value is None or value == "" else scalar(value)
            cells.append(text.ljust(width))
        lines.append("  ".join(cells).rstrip())
    return "".join(line + "\n" for line in lines)


def human_size(n: int) -> str:
    """zfs's human size (1.50G, 512K, 0B)."""
    units = ["B", "K", "M", "G", "T", "P"]
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
        value /= 1024
    return f"{n}B"


def parse_size(text: str) -> int:
    """`10G`, `512M`, `1024` -> bytes (zfs's size syntax)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([BKMGTP]?)B?", text.strip().upper())
    if not match:
        raise SimError(f"bad numeric value '{text}'", 1)
    power = " BKMGTP".index(match.group(2) or "B") - 1 if match.group(2) else 0
    return int(float(match.group(1)) * (1024 ** max(power, 0)))


def iso_now(ts: float) -> str:
    """An ISO timestamp with milliseconds and Z, like JS Date.toISOString()."""
    import time as _time
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
