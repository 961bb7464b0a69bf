"""The instance commands: boot, list, show, delete, power, snapshot, console, volumes,
set-password."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from virt.cli.context import Context
from virt.errors import InvalidRequest
from virt.model import BlockDevice, ImageRef, PowerState, VolumeConnection
from virt.store import InstanceRecord

LIST_COLUMNS = ("name", "uuid", "vm_state", "task_state", "power_state", "flavor", "host")


def _warn_unreachable(ctx: Context) -> bool:
    """Whether the engine cannot be reached; if so, a warning on stderr says why."""
    down = ctx.service.engine_unavailable
    if down is None:
        return False
    ctx.out.warning(f"the hypervisor cannot be reached ({down.message}): showing the stored "
                    "records; this host's power states are unknown")
    return True


def _summary(record: InstanceRecord) -> str:
    task = f", {record.task_state}" if record.task_state else ""
    return f"{record.name} ({record.uuid}): {record.vm_state}{task}, {record.power_state.value}"


def _report(ctx: Context, verb: str, record: InstanceRecord) -> None:
    ctx.out.message(f"{verb} {_summary(record)}", json_value=record.as_dict())


def read_connection(path: str) -> VolumeConnection:
    """A Nova connection_info JSON file, parsed (once) into the volume it describes, or a
    clear error naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read connection_info file {path}: {exc.strerror}") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"connection_info file {path} is not valid JSON: {exc.msg} (line {exc.lineno})"
        ) from None
    if not isinstance(info, dict):
        raise InvalidRequest(f"connection_info file {path} must hold a JSON object")
    return VolumeConnection.from_connection_info(info)


def _volume_spec(spec: str) -> BlockDevice:
    path, sep, mountpoint = spec.rpartition(":")
    if not sep or not path or not mountpoint:
        raise InvalidRequest(
            f"--volume {spec!r} must be CONNINFO.json:MOUNTPOINT (e.g. vol.json:/dev/vdb)"
        )
    return BlockDevice(connection=read_connection(path), mountpoint=mountpoint)


# -- commands --------------------------------------------------------------------------------


def cmd_boot(ctx: Context, args: argparse.Namespace) -> int:
    service = ctx.service
    flavor = service.flavor(
        args.flavor, vcpus=args.vcpus, memory_mb=args.memory_mb, disk_gb=args.disk_gb
    )
    image = ImageRef(
        ref=args.image,
        disk_format=args.disk_format,
        kernel=args.kernel,
        ramdisk=args.ramdisk,
        kernel_cmdline=args.cmdline,
    )
    volumes = [_volume_spec(spec) for spec in args.volume or ()]
    with ctx.out.progress(f"Booting {args.name}"):
        record = service.boot(
            args.name, image=image, flavor=flavor, power_on=not args.stopped,
            block_devices=volumes,
        )
    _report(ctx, "booted", record)
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    service = ctx.service
    records = service.list_instances(all_hosts=args.all_hosts)
    rows = [r.as_dict() for r in records]
    if _warn_unreachable(ctx):  # what is stored may be stale: this host's read unknown
        for row, record in zip(rows, records, strict=True):
            if service.is_here(record):
                row["power_state"] = PowerState.UNKNOWN.value
    table = [dict(row, flavor=r.flavor.name) for row, r in zip(rows, records, strict=True)]
    ctx.out.table(table, LIST_COLUMNS, json_value=rows)
    if not args.all_hosts and not ctx.out.json:
        elsewhere = len(service.list_instances(all_hosts=True)) - len(records)
        if elsewhere:
            ctx.out.message(f"({elsewhere} more on other hosts: `virtkit list --all-hosts`)")
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    if args.events < 0:
        raise InvalidRequest("--events must not be negative")
    service = ctx.service
    record, live = service.refresh(args.instance)
    unreachable = service.is_here(record) and _warn_unreachable(ctx)
    volumes = [b.as_dict(masked=True) for b in service.store.list_block_devices(record.uuid)]
    vifs = [v.as_dict() for v in service.store.list_vifs(record.uuid)]
    history = service.store.list_events(record.uuid)
    events = [e.as_dict() for e in history[-args.events:]] if args.events else []
    data = record.as_dict()
    data.update(live_power_state=live.value, on_this_host=service.is_here(record),
                block_devices=volumes, vifs=vifs, events=events)
    if ctx.out.json:
        ctx.out.data(data)
        return 0
    pairs = dict(data)
    pairs["flavor"] = (
        f"{record.flavor.name} ({record.flavor.vcpus} vCPU, {record.flavor.memory_mb} MiB, "
        f"{record.flavor.root_gb} GiB)"
    )
    pairs["image"] = record.image.ref if record.image else None
    if not service.is_here(record):
        pairs["host"] = f"{record.host} (not this host, {service.host}: only {record.host} " \
            "can operate it)"
        pairs["live_power_state"] = f"unknown (read on {record.host})"
    elif unreachable:
        pairs["live_power_state"] = "unknown (the hypervisor cannot be reached)"
    elif live is PowerState.UNKNOWN:
        pairs["live_power_state"] = "unknown (the hypervisor cannot tell)"
    del pairs["on_this_host"]
    pairs["block_devices"] = [
        f"{v['mountpoint']}: {v['volume_id'] or '-'} {json.dumps(v['connection_info'])}"
        for v in volumes
    ]
    pairs["events"] = [f"{e['timestamp']} {e['event']}" for e in events]
    ctx.out.fields(pairs)
    return 0


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.out.progress(f"Deleting {args.instance}"):
        record = ctx.service.delete(args.instance)
    _report(ctx, "deleted", record)
    return 0


def cmd_reset_state(ctx: Context, args: argparse.Namespace) -> int:
    record = ctx.service.reset_state(args.instance, vm_state=args.state)
    _report(ctx, "reset", record)
    return 0


def cmd_start(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.out.progress(f"Starting {args.instance}"):
        record = ctx.service.start(args.instance)
    _report(ctx, "started", record)
    return 0


def cmd_stop(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.out.progress(f"Stopping {args.instance} (forced after {args.timeout:g}s)"):
        record, result = ctx.service.stop(args.instance, timeout=args.timeout)
    how = (
        "was already off" if result.already_off
        else "forced off" if result.forced
        else "shut down cleanly"
    )
    data = record.as_dict()
    data["power_off"] = {"clean": result.clean, "forced": result.forced,
                         "already_off": result.already_off,
                         "duration_s": round(result.duration_s, 3)}
    ctx.out.message(f"stopped {_summary(record)} ({how} in {result.duration_s:.1f}s)",
                    json_value=data)
    return 0


def cmd_reboot(ctx: Context, args: argparse.Namespace) -> int:
    kind = "hard" if args.hard else "soft"
    with ctx.out.progress(f"Rebooting {args.instance} ({kind})"):
        record = ctx.service.reboot(args.instance, hard=args.hard)
    _report(ctx, f"rebooted ({kind})", record)
    return 0


def _simple(verb: str, method: str) -> Any:
    def command(ctx: Context, args: argparse.Namespace) -> int:
        with ctx.out.progress(f"{method.capitalize()} {args.instance}"):
            record = getattr(ctx.service, method)(args.instance)
        _report(ctx, verb, record)
        return 0

    command.__name__ = f"cmd_{method}"
    return command


cmd_pause = _simple("paused", "pause")
cmd_unpause = _simple("unpaused", "unpause")
cmd_suspend = _simple("suspended", "suspend")
cmd_resume = _simple("resumed", "resume")


def cmd_snapshot(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.out.progress(f"Snapshotting {args.instance} as {args.snapshot}"):
        record, image = ctx.service.snapshot(args.instance, args.snapshot)
    ctx.out.message(
        f"snapshot {args.snapshot} of {record.name}: image {image.ref}",
        json_value={"instance": record.as_dict(), "snapshot": args.snapshot,
                    "image": {"ref": image.ref, "disk_format": image.disk_format,
                              "kernel": image.kernel, "ramdisk": image.ramdisk}},
    )
    return 0


def cmd_console(ctx: Context, args: argparse.Namespace) -> int:
    if args.lines is not None and args.lines < 0:
        raise InvalidRequest("--lines must not be negative")
    text = ctx.service.console(args.instance)
    if args.lines is not None:
        lines = text.splitlines()
        text = "\n".join(lines[-args.lines:] if args.lines else [])
    if ctx.out.json:
        ctx.out.data({"instance": args.instance, "output": text})
    else:
        ctx.out.text(text)
    return 0


def cmd_volume_attach(ctx: Context, args: argparse.Namespace) -> int:
    connection = read_connection(args.connection_info)
    with ctx.out.progress(f"Attaching a volume to {args.instance} at {args.mountpoint}"):
        bdm = ctx.service.attach_volume(
            args.instance, connection, args.mountpoint, disk_bus=args.disk_bus,
            delete_on_termination=args.delete_on_termination,
        )
    ctx.out.message(
        f"attached volume {bdm.volume_id or '-'} to {args.instance} at {bdm.mountpoint}",
        json_value=bdm.as_dict(masked=True),
    )
    return 0


def cmd_volume_detach(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.out.progress(f"Detaching {args.volume} from {args.instance}"):
        bdm = ctx.service.detach_volume(args.instance, args.volume)
    ctx.out.message(
        f"detached volume {bdm.volume_id or '-'} from {args.instance} ({bdm.mountpoint})",
        json_value=bdm.as_dict(masked=True),
    )
    return 0


def read_password(*, prompt: str = "New password: ") -> str:
    """From a prompt (asked twice) on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Repeat the password: ") != first:
            raise InvalidRequest("the two passwords differ; nothing was changed")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise InvalidRequest("the password is empty; nothing was changed",
                             hint="type it at the prompt or pipe it on stdin")
    return password


def cmd_set_password(ctx: Context, args: argparse.Namespace) -> int:
    ctx.service.check_set_password(args.instance)  # fail before prompting
    password = read_password()
    with ctx.out.progress(f"Setting the admin password of {args.instance}"):
        record = ctx.service.set_password(args.instance, password)
    _report(ctx, "password set on", record)
    return 0
