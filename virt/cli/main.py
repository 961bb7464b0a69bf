"""`virtkit`: the command line of the compute service.

Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 not found,
4 unsupported by the driver (the `exit_code` of the virtkit error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from oslo_config import cfg

from virt.cli import db, demo, info, instances
from virt.cli.context import CONFIG_ENV, Context
from virt.cli.output import FORMATS
from virt.config import describe_cfg_error
from virt.errors import EXIT_FAILED, EXIT_USAGE, VirtError
from virt.masking import install_log_filter, scrub

Handler = Callable[[Context, argparse.Namespace], int]

EPILOG = (
    "exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 not found, "
    "4 unsupported by the driver"
)


class _UsageError(Exception):
    """A command line argparse refused; main() reports it like every other error."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, f"see '{self.prog} --help'")


def _common() -> _Parser:
    """Options accepted both before and after the command name."""
    parent = _Parser(add_help=False)
    parent.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"configuration file (default: ${CONFIG_ENV}, else built-in "
                        "defaults)")
    parent.add_argument("--format", choices=FORMATS, default=argparse.SUPPRESS,
                        help="output: tables for people (default) or json for scripts")
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="log everything and show tracebacks")
    return parent


class _Commands:
    """Registers subcommands on one subparsers action, each with the common options."""

    def __init__(self, commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
        self.commands = commands
        self.common = common

    def add(self, name: str, handler: Handler, help_text: str,
            **kwargs: object) -> argparse.ArgumentParser:
        """A command with `handler`; its description repeats its help."""
        sub = self.commands.add_parser(name, help=help_text, description=help_text,
                                       parents=[self.common], **kwargs)  # type: ignore[arg-type]
        sub.set_defaults(handler=handler)
        return sub

    def add_instance(self, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        """A command on one instance (its first argument is NAME|UUID)."""
        sub = self.add(name, handler, help_text)
        sub.add_argument("instance", metavar="NAME|UUID")
        return sub

    def add_group(self, name: str, help_text: str, dest: str, *,
                  description: str | None = None) -> argparse._SubParsersAction[_Parser]:
        """A command whose own subcommands (ACTION) are registered on what it returns."""
        group = self.commands.add_parser(name, help=help_text, description=description,
                                         parents=[self.common])
        return group.add_subparsers(dest=dest, metavar="ACTION", required=True,
                                    parser_class=_Parser)


def build_parser() -> argparse.ArgumentParser:
    """The `virtkit` argument parser: every command with its handler in `handler`."""
    common = _common()
    parser = _Parser(
        prog="virtkit", description="Run instances on the configured compute driver.",
        epilog=EPILOG, parents=[common],
    )
    commands = _Commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                               parser_class=_Parser), common)
    commands.add("drivers", info.cmd_drivers,
                 "list the installed compute drivers and their capabilities")
    commands.add("host", info.cmd_host, "show this host's resources as the driver reports them")
    _add_boot(commands)
    _add_instance_commands(commands)
    _add_volume(commands)
    _add_config(commands)
    _add_db(commands)
    run_demo = commands.add(
        "demo", demo.cmd_demo,
        "run a whole lifecycle on the fake driver in a throwaway state directory "
        "(or on the driver and store of a --config given on its command line); "
        "everything it creates is deleted, also when interrupted")
    run_demo.add_argument("--image", default="cirros", metavar="REF",
                          help="image to boot (default: cirros, which the fake driver accepts)")
    return parser


def _add_boot(commands: _Commands) -> None:
    boot = commands.add("boot", instances.cmd_boot, "create and start an instance")
    boot.add_argument("name")
    boot.add_argument("--image", required=True, metavar="REF",
                      help="what to boot: a disk path, image name or snapshot ref")
    boot.add_argument("--kernel", metavar="PATH", help="direct kernel boot: the kernel")
    boot.add_argument("--ramdisk", metavar="PATH", help="direct kernel boot: the initrd")
    boot.add_argument("--cmdline", metavar="ARGS", help="direct kernel boot: kernel arguments")
    boot.add_argument("--disk-format", metavar="FORMAT",
                      help="qcow2, raw, docker, zvol, vhd, ami or iso")
    boot.add_argument("--flavor", metavar="NAME", help="a flavor from [DEFAULT] flavors")
    boot.add_argument("--vcpus", type=int, metavar="N")
    boot.add_argument("--memory-mb", type=int, metavar="M")
    boot.add_argument("--disk-gb", type=int, metavar="G")
    boot.add_argument("--stopped", action="store_true", help="create it but do not start it")
    boot.add_argument("--volume", action="append", metavar="CONNINFO.json:MOUNTPOINT",
                      help="attach a volume at boot (Nova connection_info file); repeatable")


def _add_instance_commands(commands: _Commands) -> None:
    listing = commands.add("list", instances.cmd_list, "list this host's instances")
    listing.add_argument("--all-hosts", action="store_true",
                         help="every host's instances in the store (see the host column)")
    show = commands.add_instance("show", instances.cmd_show,
                                 "show an instance of any host (secrets masked)")
    show.add_argument("--events", type=int, default=20, metavar="N",
                      help="how many recent events to show (default 20)")
    commands.add_instance("delete", instances.cmd_delete, "destroy an instance and its disks")
    commands.add_instance("start", instances.cmd_start, "power an instance on")
    stop = commands.add_instance("stop", instances.cmd_stop, "shut an instance down")
    stop.add_argument("--timeout", type=float, default=60, metavar="SECONDS",
                      help="force it off after this long (default 60; 0 forces at once)")
    reboot = commands.add_instance("reboot", instances.cmd_reboot, "reboot an instance")
    reboot.add_argument("--hard", action="store_true", help="reset instead of asking the guest")
    commands.add_instance("pause", instances.cmd_pause, "freeze an instance in memory")
    commands.add_instance("unpause", instances.cmd_unpause, "unfreeze a paused instance")
    commands.add_instance("suspend", instances.cmd_suspend, "save an instance to disk and stop it")
    commands.add_instance("resume", instances.cmd_resume, "restore a suspended instance")
    snapshot = commands.add_instance("snapshot", instances.cmd_snapshot,
                                     "capture an instance's root disk as a new image")
    snapshot.add_argument("snapshot", metavar="SNAPNAME")
    console = commands.add_instance("console", instances.cmd_console,
                                    "print the guest's console log")
    console.add_argument("--lines", type=int, metavar="N", help="only the last N lines")
    reset = commands.add_instance(
        "reset-state", instances.cmd_reset_state,
        "clear a task left by a process that died; vm_state follows the engine")
    reset.add_argument("--state", metavar="VM_STATE",
                       help="force this vm_state (e.g. active or error) instead")
    commands.add_instance("set-password", instances.cmd_set_password,
                          "set the guest's admin password (read from a prompt or stdin, never argv)")


def _add_volume(commands: _Commands) -> None:
    actions = commands.add_group("volume", "attach or detach volumes", "volume_command",
                                 description="attach or detach volumes")
    attach = actions.add_parser(
        "attach", help="attach a volume from a Nova connection_info JSON file",
        parents=[commands.common])
    attach.add_argument("instance", metavar="NAME|UUID")
    attach.add_argument("connection_info", metavar="CONNINFO.json")
    attach.add_argument("mountpoint", metavar="MOUNTPOINT", help="e.g. /dev/vdb")
    attach.add_argument("--disk-bus", metavar="BUS", help="virtio, scsi, ide ...")
    attach.add_argument("--delete-on-termination", action="store_true")
    attach.set_defaults(handler=instances.cmd_volume_attach)
    detach = actions.add_parser("detach", help="detach a volume", parents=[commands.common])
    detach.add_argument("instance", metavar="NAME|UUID")
    detach.add_argument("volume", metavar="MOUNTPOINT|VOLUME_ID")
    detach.set_defaults(handler=instances.cmd_volume_detach)


def _add_config(commands: _Commands) -> None:
    actions = commands.add_group("config", "configuration helpers", "config_command")
    sample = actions.add_parser(
        "sample", help="print every option of virtkit and of each installed driver",
        parents=[commands.common])
    sample.set_defaults(handler=info.cmd_config_sample)


def _add_db(commands: _Commands) -> None:
    actions = commands.add_group("db", "the state store's schema", "db_command",
                                 description="the state store's schema")
    actions.add_parser(
        "version", help="the schema revision of the store and the one this virtkit needs",
        parents=[commands.common]).set_defaults(handler=db.cmd_db_version)
    actions.add_parser(
        "upgrade", help="upgrade the store's schema to this virtkit's (run once per shared "
        "store, after every host runs this virtkit)",
        parents=[commands.common]).set_defaults(handler=db.cmd_db_upgrade)


class _ConciseFormatter(logging.Formatter):
    """Without --debug: one line per warning or error, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return f"virtkit: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    install_log_filter([handler])
    # stevedore warns "Could not load NAME" for a failed driver import, which virtkit
    # reports itself (with the reason and the extra to install): once is enough.
    logging.getLogger("stevedore").setLevel(logging.NOTSET if debug else logging.ERROR)
    if debug:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.setLevel(logging.DEBUG)
        return
    # Warnings (a stale record removed, a rollback that could not finish) deserve an
    # operator's eye even without --debug; tracebacks do not.
    handler.setFormatter(_ConciseFormatter())
    root.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _json_error(argparse.Namespace(format=_requested_format(argv)), EXIT_USAGE,
                    "UsageError", exc.message, exc.hint)
        return _fail(False, f"{exc.message} ({exc.hint})", EXIT_USAGE)
    except SystemExit as exc:  # argparse: --help
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    for name, default in (("config", None), ("format", "table"), ("debug", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    _setup_logging(args.debug)
    ctx = Context(args)
    try:
        return args.handler(ctx, args)
    except VirtError as exc:
        _json_error(args, exc.exit_code, type(exc).__name__, exc.message, exc.hint)
        return _fail(args.debug, str(exc), exc.exit_code)
    except cfg.Error as exc:  # oslo.config: a bad option or value, a config file it cannot read
        message = f"configuration: {describe_cfg_error(exc)}"
        _json_error(args, EXIT_USAGE, "ConfigError", message, None)
        return _fail(args.debug, message, EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args.debug, "interrupted", 130)
    except BrokenPipeError:
        # The reader went away (`virtkit ... | head -1`): exit quietly, as if by SIGPIPE.
        _discard_stdout()
        return 128 + 13
    except Exception as exc:
        _json_error(args, EXIT_FAILED, type(exc).__name__, str(exc), None)
        return _fail(args.debug, f"unexpected {type(exc).__name__}: {exc} "
                     "(run with --debug for the traceback)", EXIT_FAILED)
    finally:
        try:
            ctx.close()
        except Exception as exc:  # closing must not hide the command's own outcome
            logging.getLogger(__name__).debug("closing the service failed: %s", exc)


def _requested_format(argv: Sequence[str] | None) -> str:
    """The --format of a command line that did not parse (table unless json is legible)."""
    probe = _Parser(add_help=False)
    probe.add_argument("--format", choices=FORMATS, default="table")
    try:
        known, _rest = probe.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    except _UsageError:
        return "table"
    return str(known.format)


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _json_error(
    args: argparse.Namespace, code: int, kind: str, message: str, hint: str | None
) -> None:
    """In json mode, scripts also get the error as a document on stdout."""
    if args.format == "json":
        error = {"exit_code": code, "type": kind, "message": scrub(message),
                 "hint": scrub(hint) if hint else hint}
        print(json.dumps({"error": error}, indent=2))


def _fail(debug: bool, message: str, code: int) -> int:
    if debug:
        traceback.print_exc()
    print(f"virtkit: error: {scrub(message)}", file=sys.stderr)
    return code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
