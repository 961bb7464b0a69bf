"""zfs (and zpool's listing): datasets of the simulated `zones` pool."""

from __future__ import annotations

import sys
from typing import Any

from . import datasets
from .fmt import human_size, parse_size
from .state import POOL, SimError, State
from .vmadm import getopt

USAGE = """usage: zfs command args ...
where 'command' is one of the following:

\tcreate [-p] [-o property=value] ... <filesystem>
\tcreate [-ps] [-b blocksize] [-o property=value] ... -V <size> <volume>
\tdestroy [-fnpRrv] <filesystem|volume>
\tdestroy [-dnpRrv] <filesystem|volume>@<snap>
\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...
\trollback [-rRf] <snapshot>
\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>
\tlist [-rH][-d max] [-o property[,...]] [-s property]... [-t type[,...]] [filesystem|volume|snapshot] ...
\tset <property=value> ... <filesystem|volume|snapshot> ...
\tget [-rHp] [-d max] [-o "all" | field[,...]] [-t type[,...]] <"all" | property[,...]> [filesystem|volume|snapshot] ...
\tsend [-p] <snapshot>
\treceive [-F] <filesystem|volume|snapshot>"""
SIZE_PROPS = {"used", "available", "avail", "referenced", "refer", "quota", "volsize",
              "refreservation", "reservation", "refquota"}
ALIASES = {"avail": "available", "refer": "referenced"}


def usage(message: str) -> SimError:
    return SimError(f"{message}\n{USAGE}", 2)


def prop_value(state: State, db: datasets.DB, name: str, prop: str) -> tuple[Any, str]:
    """(value, source) of one property; value None prints as '-'."""
    prop = ALIASES.get(prop, prop)
    rec = db[name]
    base = name.partition("@")[0]
    if prop == "name":
        return name, "-"
    if prop == "type":
        return rec["type"], "-"
    if prop == "origin":
        return rec.get("origin"), "-"
    if prop == "creation":
        return rec["creation"], "-"
    if prop == "guid":
        return rec["guid"], "-"
    if prop == "used":
        return datasets.used(state, db, name), "-"
    if prop == "referenced":
        return datasets.referenced(state, db, name), "-"
    if prop == "available":
        return (None if "@" in name else datasets.available(state, db, name)), "-"
    if prop == "mountpoint":
        if "@" in name or rec["type"] == "volume":
            return None, "-"
        return f"/{name}", "default"
    if prop in rec["props"]:
        return rec["props"][prop], "local"
    if prop in ("quota", "reservation", "refquota", "refreservation"):
        return 0, "default"
    if prop in ("compression", "devices"):
        return ("off" if prop == "compression" else "on"), "default"
    if prop == "volsize" and db[base]["type"] == "volume":
        return db[base]["props"].get("volsize"), "-"
    if ":" in prop:
        return None, "-"
    raise SimError(f"bad property list: invalid property '{prop}'", 2)


def show(prop: str, value: Any, parsable: bool) -> str:
    if value is None:
        return "-"
    prop = ALIASES.get(prop, prop)
    if prop in SIZE_PROPS:
        n = int(value)
        if prop in ("quota", "reservation", "refquota") and n == 0 and not parsable:
            return "none"
        return str(n) if parsable else human_size(n)
    return str(value)


def _targets(db: datasets.DB, names: list[str], recursive: bool, depth: int | None,
             types: set[str]) -> list[str]:
    if not names:
        names, recursive = [POOL], True
    out: list[str] = []
    for name in names:
        datasets.require(db, name)
        found = [name]
        if recursive or depth is not None:
            for other in sorted(db):
                rel = other[len(name):]
                if other.startswith(name) and rel[:1] in ("/", "@"):
                    level = rel.count("/") + (1 if "@" in rel else 0)
                    if depth is None or level <= depth:
                        found.append(other)
        out.extend(n for n in found if n not in out)
    return [n for n in out if db[n]["type"] in types]


def _types(opts: dict[str, Any], default: str) -> set[str]:
    spec = opts.get("t", default)
    if spec == "all":
        return {"filesystem", "volume", "snapshot"}
    kinds = {"snap": "snapshot", "fs": "filesystem", "vol": "volume"}
    return {kinds.get(t, t) for t in spec.split(",")}


def cmd_list(state: State, args: list[str]) -> int:
    opts, names = getopt(args, "rHp", "odts")
    columns = opts.get("o", "name,used,avail,refer,mountpoint").split(",")
    depth = int(opts["d"]) if "d" in opts else None
    explicit_snap = any("@" in n for n in names)
    types = _types(opts, "filesystem,volume,snapshot" if explicit_snap else "filesystem,volume")
    with state.locked():
        db = datasets.load(state)
        rows = [[show(c, prop_value(state, db, n, c)[0], bool(opts.get("p"))) for c in columns]
                for n in _targets(db, names, bool(opts.get("r")), depth, types)]
    _print_rows(rows, [c.upper() for c in columns], bool(opts.get("H")))
    return 0


def _print_rows(rows: list[list[str]], header: list[str], scripted: bool) -> None:
    if scripted:
        sys.stdout.write("".join("\t".join(r) + "\n" for r in rows))
        return
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
                         .rstrip() + "\n")


def cmd_get(state: State, args: list[str]) -> int:
    opts, rest = getopt(args, "rHp", "odts")
    if not rest:
        raise usage("missing property argument")
    props, names = rest[0].split(","), rest[1:]
    fields = opts.get("o", "name,property,value,source").split(",")
    depth = int(opts["d"]) if "d" in opts else None
    with state.locked():
        db = datasets.load(state)
        rows = []
        for name in _targets(db, names, bool(opts.get("r")), depth, _types(opts, "all")):
            for prop in props:
                value, source = prop_value(state, db, name, prop)
                cell = {"name": name, "property": prop, "source": source,
                        "value": show(prop, value, bool(opts.get("p")))}
                rows.append([cell[f] for f in fields])
    _print_rows(rows, [f.upper() for f in fields], bool(opts.get("H")))
    return 0


def _props(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise usage(f"missing '=' for property=value argument: {item}")
        out[key] = str(parse_size(value)) if key in SIZE_PROPS and value != "none" else value
    return out


def _multi_o(args: list[str]) -> tuple[list[str], list[str]]:
    """Split repeated `-o prop=value` out of the arguments."""
    props, rest = [], []
    it = iter(args)
    for arg in it:
        if arg == "-o":
            props.append(next(it, ""))
        elif arg.startswith("-o") and "=" in arg:
            props.append(arg[2:])
        else:
            rest.append(arg)
    return props, rest


def cmd_create(state: State, args: list[str]) -> int:
    props, rest = _multi_o(args)
    opts, names = getopt(rest, "ps", "Vb")
    if len(names) != 1:
        raise usage("missing filesystem argument" if not names else "too many arguments")
    with state.locked():
        db = datasets.load(state)
        if "V" in opts:
            datasets.create_volume(state, db, names[0], parse_size(opts["V"]), _props(props))
        else:
            datasets.create_filesystem(state, db, names[0], _props(props))
        datasets.save(state, db)
    return 0


def cmd_simple(state: State, command: str, args: list[str]) -> int:
    """snapshot, destroy, clone, rollback, set."""
    props, rest = _multi_o(args) if command in ("clone", "snapshot") else ([], args)
    opts, names = getopt(rest, "rRfnpvdF", "")
    need = {"clone": 2, "set": 2}.get(command, 1)
    if len(names) < need:
        raise usage(f"missing {'snapshot' if command != 'set' else 'property'} argument")
    with state.locked():
        db = datasets.load(state)
        if command == "snapshot":
            for name in names:
                targets = [name]
                if opts.get("r"):
                    base, _, snap = name.partition("@")
                    targets += [f"{c}@{snap}" for c in reversed(datasets.children(db, base))]
                for target in targets:
                    datasets.snapshot(state, db, target)
        elif command == "destroy":
            datasets.destroy(state, db, names[0], recursive=bool(opts.get("r") or opts.get("R")))
        elif command == "clone":
            datasets.clone(state, db, names[0], names[1], _props(props))
        elif command == "rollback":
            datasets.rollback(state, db, names[0], destroy_newer=bool(opts.get("r")))
        else:
            for name in [n for n in names if "=" not in n]:
                datasets.require(db, name)["props"].update(
                    _props([n for n in names if "=" in n]))
        datasets.save(state, db)
    return 0


def cmd_send(state: State, args: list[str]) -> int:
    opts, names = getopt(args, "pRDvPLec", "")
    if len(names) != 1:
        raise usage("missing snapshot argument")
    if sys.stdout.isatty():
        raise SimError("Error: Stream can not be written to a terminal.\n"
                       "You must redirect standard output.")
    with state.locked():
        data = datasets.stream_bytes(state, datasets.load(state), names[0])
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def cmd_receive(state: State, args: list[str]) -> int:
    opts, names = getopt(args, "Fnuvd", "")
    if len(names) != 1:
        raise usage("missing snapshot argument")
    target, _, snap = names[0].partition("@")
    with state.locked():
        db = datasets.load(state)
        if opts.get("F") and target in db:
            datasets.destroy(state, db, target, recursive=True)
        datasets.receive(state, db, target, sys.stdin.buffer, snap_name=snap or None)
        datasets.save(state, db)
    return 0


def main(state: State, argv: list[str]) -> int:
    """zfs COMMAND [ARGS]."""
    if not argv:
        raise usage("missing command")
    command = {"recv": "receive", "snap": "snapshot"}.get(argv[0], argv[0])
    if command == "list":
        return cmd_list(state, argv[1:])
    if command == "get":
        return cmd_get(state, argv[1:])
    if command == "create":
        return cmd_create(state, argv[1:])
    if command in ("snapshot", "destroy", "clone", "rollback", "set"):
        return cmd_simple(state, command, argv[1:])
    if command == "send":
        return cmd_send(state, argv[1:])
    if command == "receive":
        return cmd_receive(state, argv[1:])
    raise usage(f"unrecognized command '{argv[0]}'")
