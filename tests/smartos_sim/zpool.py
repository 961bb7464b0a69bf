"""zpool: the simulated host's one pool, `zones`."""

from __future__ import annotations

import sys

from . import datasets
from .fmt import human_size
from .state import POOL, SimError, State
from .vmadm import getopt

COLUMNS = ["name", "size", "allocated", "free", "capacity", "health", "altroot"]
ALIASES = {"alloc": "allocated", "cap": "capacity"}


def main(state: State, argv: list[str]) -> int:
    """zpool list [-H] [-p] [-o field,...] [pool...]."""
    if not argv or argv[0] != "list":
        raise SimError("usage:\n\tlist [-Hp] [-o property[,...]] [pool] ...", 2)
    opts, pools = getopt(argv[1:], "Hpv", "oT")
    for pool in pools:
        if pool != POOL:
            raise SimError(f"cannot open '{pool}': no such pool")
    fields = [ALIASES.get(f, f) for f in opts.get("o", "name,size,alloc,free,cap,health,altroot")
              .split(",")]
    for field in fields:
        if field not in COLUMNS:
            raise SimError(f"bad property list: invalid property '{field}'", 2)
    with state.locked():
        size = int(state.host()["zpool_size"])
        used = datasets.pool_used(state, datasets.load(state))
    parsable = bool(opts.get("p"))
    values = {"name": POOL, "size": size, "allocated": used, "free": max(size - used, 0),
              "capacity": (used * 100) // size if size else 0, "health": "ONLINE",
              "altroot": "-"}

    def text(field: str) -> str:
        value = values[field]
        if isinstance(value, int) and field in ("size", "allocated", "free") and not parsable:
            return human_size(value)
        if field == "capacity" and not parsable:
            return f"{value}%"
        return str(value)
    row = [text(f) for f in fields]
    if opts.get("H"):
        sys.stdout.write("\t".join(row) + "\n")
    else:
        header = [f.upper() if f not in ("allocated", "capacity") else f.upper()[:5]
                  for f in fields]
        widths = [max(len(a), len(b)) for a, b in zip(header, row, strict=True)]
        for line in (header, row):
            sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True))
                             .rstrip() + "\n")
    return 0
