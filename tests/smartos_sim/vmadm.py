"""vmadm: the VM administration tool of the simulated global zone."""

from __future__ import annotations

import json
import sys
from typing import Any

from . import datasets, vms
from .fmt import (
    DEFAULT_COLUMNS,
    DEFAULT_SORT,
    LIST_FIELDS,
    dumps,
    lookup_path,
    matches,
    parse_fields,
    parse_filters,
    sort_rows,
    table,
)
from .state import SimError, State

USAGE = """Usage: /usr/sbin/vmadm <command> [options]

    create [-f <filename>]
    create-snapshot <uuid> <snapname>
    delete <uuid>
    delete-snapshot <uuid> <snapname>
    get <uuid>
    info <uuid> [type,...]
    list [-p] [-H] [-o field,...] [-s field,...] [field=value ...]
    lookup [-j|-1] [-o field,...] [field=value ...]
    reboot <uuid> [-F]
    rollback-snapshot <uuid> <snapname>
    start <uuid> [option=value ...]
    stop <uuid> [-F] [-t timeout]
    update <uuid> [-f <filename>]
     -or- update <uuid> property=value [property=value ...]

For more detailed information on the use of this command, type 'man vmadm'."""
ALIASES = {"boot": "start", "halt": "stop", "destroy": "delete", "json": "get"}
WITH_UUID = {"get", "start", "stop", "reboot", "delete", "update", "info", "create-snapshot",
             "rollback-snapshot", "delete-snapshot"}


def usage(message: str | None = None) -> SimError:
    text = (message + "\n" if message else "") + USAGE
    return SimError(text, 2)


def is_uuid(text: str | None) -> bool:
    """vmadm's purely syntactic check: 36 characters with '-' at 8, 13, 18 and 23."""
    return (text is not None and len(text) == 36
            and all(text[i] == "-" for i in (8, 13, 18, 23)))


def getopt(args: list[str], flags: str, valued: str) -> tuple[dict[str, Any], list[str]]:
    """Options anywhere among the arguments (-pH combined, -o VALUE / -oVALUE)."""
    opts: dict[str, Any] = {}
    rest = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i + 1:])
            break
        if arg.startswith("-") and len(arg) > 1 and "=" not in arg:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch in valued:
                    value = arg[j + 1:] or (args[i + 1] if i + 1 < len(args) else None)
                    if value is None:
                        raise usage(f"option requires an argument -- {ch}")
                    if not arg[j + 1:]:
                        i += 1
                    opts[ch] = value
                    break
                if ch not in flags:
                    raise usage(f"illegal option -- {ch}")
                opts[ch] = True
                j += 1
        else:
            rest.append(arg)
        i += 1
    return opts, rest


def read_payload(opts: dict[str, Any], command: str) -> Any:
    """The JSON payload from -f FILE or stdin (never from a terminal)."""
    if "f" in opts:
        try:
            with open(opts["f"], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise SimError(f"Unable to read {opts['f']}: {exc.strerror}") from None
    else:
        if sys.stdin.isatty():
            raise usage(f"Will not {command} from stdin when stdin is a tty.")
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SimError(f"Invalid JSON payload: {exc}") from None


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def cmd_create(state: State, args: list[str]) -> int:
    opts, rest = getopt(args, "", "f")
    if rest:
        raise usage("Invalid number of arguments for create")
    body = read_payload(opts, "create")
    with state.locked():
        vm, warnings, failure = vms.create(state, body)
    _warn(warnings)
    if failure:
        raise SimError(f"Failed to create VM {vm['uuid']}: provisioning failed: {failure} "
                       f"(VM {vm['uuid']} is now in state 'failed')")
    print(f"Successfully created VM {vm['uuid']}", file=sys.stderr)
    return 0


def cmd_get(state: State, uuid: str, rest: list[str]) -> int:
    with state.locked():
        vm = vms.require(state, uuid)
        out = vms.view(state, datasets.load(state), vm)
    sys.stdout.write(dumps(out) + "\n")
    return 0


def _selected(state: State, filters: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    db = datasets.load(state)
    rows = [vms.list_row(vms.view(state, db, vm)) for vm in vms.all_vms(state)]
    return [r for r in rows if matches(r, filters)]


def cmd_list(state: State, args: list[str]) -> int:
    opts, rest = getopt(args, "pH", "os")
    columns = parse_fields(opts["o"], "order") if "o" in opts else DEFAULT_COLUMNS
    sort = parse_fields(opts["s"], "sort") if "s" in opts else DEFAULT_SORT
    filters = parse_filters(rest, set(LIST_FIELDS))
    with state.locked():
        rows = sort_rows(_selected(state, filters), sort)
    sys.stdout.write(table(rows, columns, parsable=bool(opts.get("p")),
                           header=not opts.get("H") and not opts.get("p")))
    return 0


def cmd_lookup(state: State, args: list[str]) -> int:
    opts, rest = getopt(args, "j1", "o")
    if "o" in opts and not opts.get("j"):
        raise SimError("Cannot specify -o without -j")
    fields = parse_fields(opts["o"], "order") if "o" in opts else None
    filters = parse_filters(rest, set(LIST_FIELDS))
    with state.locked():
        rows = sort_rows(_selected(state, filters), ["create_timestamp", "uuid"])
    if opts.get("1") and len(rows) != 1:
        raise SimError(f"Requested unique lookup but found {len(rows)} results.")
    if opts.get("j"):
        objs = []
        for row in rows:
            row.pop("type", None)
            if row.get("brand") not in ("kvm", "bhyve"):
                row.pop("ram", None)
            objs.append({f: lookup_path(row, f) for f in fields} if fields else row)
        sys.stdout.write(dumps(objs) + "\n")
    else:
        sys.stdout.write("".join(r["uuid"] + "\n" for r in rows))
    return 0


def cmd_power(state: State, command: str, uuid: str, opts: dict[str, Any]) -> int:
    if "t" in opts and not str(opts["t"]).isdigit():
        raise usage(f"Invalid timeout: {opts['t']}")
    with state.locked():
        vm = vms.require(state, uuid)
        action = {"start": vms.start, "stop": vms.stop, "reboot": vms.reboot}[command]
        done = action(state, vm)
    if not done:
        if command == "start":
            print(f"VM {uuid} is already 'running'", file=sys.stderr)
        else:
            print(f"VM {uuid} is already not 'running' (currently: {vm['state']})",
                  file=sys.stderr)
        return 0
    verb = {"start": "started", "stop": "completed stop for",
            "reboot": "completed reboot for"}[command]
    print(f"Successfully {verb} VM {uuid}", file=sys.stderr)
    return 0


def cmd_update(state: State, uuid: str, opts: dict[str, Any], pairs: list[str]) -> int:
    if pairs:
        body: Any = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise usage(f"Invalid property: {pair}")
            body[key] = value
    else:
        body = read_payload(opts, "update")
    if not isinstance(body, dict):
        raise SimError("Invalid payload: must be a JSON object")
    with state.locked():
        vm = vms.require(state, uuid)
        warnings = vms.update(state, vm, body)
    _warn(warnings)
    print(f"Successfully updated VM {uuid}", file=sys.stderr)
    return 0


def cmd_snapshot(state: State, command: str, uuid: str, rest: list[str]) -> int:
    if len(rest) != 1:
        raise usage(f"Invalid number of arguments for {command}")
    name = rest[0]
    with state.locked():
        vm = vms.require(state, uuid)
        action = {"create-snapshot": vms.create_snapshot,
                  "rollback-snapshot": vms.rollback_snapshot,
                  "delete-snapshot": vms.delete_snapshot}[command]
        action(state, vm, name)
    verb = {"create-snapshot": "Created", "rollback-snapshot": "Rolled back",
            "delete-snapshot": "Deleted"}[command]
    print(f"{verb} snapshot {name} for VM {uuid}", file=sys.stderr)
    return 0


def cmd_info(state: State, uuid: str, rest: list[str]) -> int:
    with state.locked():
        vm = vms.require(state, uuid)
    if vm["brand"] not in ("kvm", "bhyve"):
        raise SimError(f"Unable to get VM info for VM {uuid}: The info command is only "
                       "supported for HVM VMs")
    if vm["state"] != "running":
        raise SimError(f"Unable to get VM info for VM {uuid}: Unable to get info for vm "
                       "from state \"" + vm["state"] + "\", must be \"running\".")
    info = {"status": {"status": "running"}, "vnc": {}, "cpus": [{"cpu": i}
            for i in range(int(vm.get("vcpus", 1)))]}
    wanted = ",".join(rest).split(",") if rest else ["all"]
    out = info if "all" in wanted else {k: info[k] for k in wanted if k in info}
    sys.stdout.write(dumps(out) + "\n")
    return 0


def main(state: State, argv: list[str]) -> int:
    """vmadm COMMAND [ARGS]: dispatch with vmadm's usage rules."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise usage()
    command = ALIASES.get(argv[0], argv[0])
    args = argv[1:]
    if command == "create":
        return cmd_create(state, args)
    if command == "list":
        return cmd_list(state, args)
    if command == "lookup":
        return cmd_lookup(state, args)
    if command not in WITH_UUID:
        raise usage(f"Invalid command: \"{argv[0]}\".")
    flags = {"stop": "F", "reboot": "F"}.get(command, "")
    valued = {"stop": "t", "update": "f"}.get(command, "")
    opts, positional = getopt(args, flags, valued)
    uuid = positional[0] if positional else None
    if not is_uuid(uuid):
        raise usage(f"Invalid or missing UUID for {command}")
    uuid, rest = str(uuid), positional[1:]
    if command == "get":
        return cmd_get(state, uuid, rest)
    if command in ("start", "stop", "reboot"):
        return cmd_power(state, command, uuid, opts)
    if command == "delete":
        with state.locked():
            vms.delete(state, uuid)
        print(f"Successfully deleted VM {uuid}", file=sys.stderr)
        return 0
    if command == "update":
        return cmd_update(state, uuid, opts, rest)
    if command == "info":
        return cmd_info(state, uuid, rest)
    return cmd_snapshot(state, command, uuid, rest)
