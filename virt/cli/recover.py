"""`virtkit-recover`: bring a failed host's instances back on this host.

    virtkit-recover --failed-host HOST [--instance UUID ...] [--dry-run] [--parallel N]
                    [--confirm-fenced] [--allow-missing-volumes] [--rebuild-missing-disks]
                    [--nova-db [URL] | --nova-db-file FILE] [--nova-image-dir DIR]
                    [--format table|json]
    virtkit-recover --resume-local      # after this host rebooted

Exit codes: 0 every instance recovered (or nothing to do), 1 some failed or were left
unclaimed, 2 usage error or the failed host is not known to be fenced, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from virt.config import build_conf
from virt.errors import EXIT_FAILED, EXIT_USAGE, VirtError
from virt.masking import install_log_filter, scrub

if TYPE_CHECKING:
    from oslo_config import cfg

    from virt.recovery.options import RecoveryOptions
    from virt.recovery.report import InstanceReport, RecoveryReport

CONFIG_ENV = "VIRTKIT_CONFIG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virtkit-recover",
        description="Re-spawn a failed host's instances here and re-attach their iSCSI volumes.",
        epilog="Exit codes: 0 all recovered, 1 some failed or left unclaimed, 2 usage error "
        "or host not fenced.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--failed-host", metavar="HOST", help="the host whose instances to recover")
    mode.add_argument("--resume-local", action="store_true",
                      help="restart this host's own instances that should be running")
    parser.add_argument("--instance", action="append", default=[], metavar="UUID",
                        help="recover only this instance (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (volumes are probed, nothing is changed)")
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="instances recovered at once (default [recovery] parallel)")
    parser.add_argument("--confirm-fenced", action="store_true",
                        help="the operator confirms the failed host is powered off")
    parser.add_argument("--allow-missing-volumes", action="store_true",
                        help="recover an instance even if some of its volumes cannot be reached")
    parser.add_argument("--rebuild-missing-disks", action="store_true",
                        help="with [recovery] require_instance_disk: an instance whose root "
                        "disk is missing here is spawned with a new one from its image")
    parser.add_argument("--nova-db", metavar="URL", nargs="?", const="",
                        help="read instances from a Nova database (writes back only host/node). "
                        "Alone: its URL from [recovery] nova_connection, $VIRTKIT_NOVA_DB or "
                        "[recovery] nova_connection_file; a URL given here must hold no "
                        "password")
    parser.add_argument("--nova-db-file", metavar="FILE",
                        help="read instances from the Nova database whose URL is FILE's "
                        "first line (mode 0600)")
    parser.add_argument("--nova-image-dir", metavar="DIR",
                        help="with --nova-db: images by Glance id, e.g. Nova's "
                        "<instances_path>/_base (default [recovery] nova_image_dir)")
    parser.add_argument("--host", help="this host's name (default [DEFAULT] host)")
    parser.add_argument("--volume-check", choices=["probe", "none"],
                        help="probe each volume before recovering (default [recovery] "
                        "volume_check)")
    parser.add_argument("--config", "--config-file", dest="config", metavar="FILE",
                        help=f"virtkit config file (default ${CONFIG_ENV})")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="virtkit-recover: %(message)s")
    install_log_filter()
    # stevedore warns "Could not load NAME"; the error below says it with the installed drivers.
    logging.getLogger("stevedore").setLevel(logging.NOTSET if args.verbose else logging.ERROR)
    try:
        return _run(args)
    except VirtError as exc:
        print(f"virtkit-recover: error: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("virtkit-recover: interrupted; run it again to finish (it resumes)", file=sys.stderr)
        return 130
    except Exception as exc:  # a defect: still one line, no traceback (-v logs it)
        logging.getLogger(__name__).info("unexpected error", exc_info=True)
        print(f"virtkit-recover: error: unexpected {type(exc).__name__}: {scrub(str(exc))}",
              file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    # Imported here so `--help` and usage errors stay fast.
    from virt.recovery.lock import run_lock
    from virt.recovery.nova_url import nova_db_url
    from virt.recovery.options import RecoveryOptions, register_opts
    from virt.recovery.report import report_lines

    conf = build_conf(args.config or os.environ.get(CONFIG_ENV) or None)
    register_opts(conf)
    host = args.host or conf.host
    nova_url = nova_db_url(given=args.nova_db, url_file=args.nova_db_file, conf=conf)
    options = RecoveryOptions(
        failed_host=args.failed_host, instances=tuple(args.instance),
        resume_local=args.resume_local, dry_run=args.dry_run,
        parallel=args.parallel if args.parallel is not None else conf.recovery.parallel,
        confirm_fenced=args.confirm_fenced, allow_missing_volumes=args.allow_missing_volumes,
        volume_check=args.volume_check or conf.recovery.volume_check,
        volume_timeout=conf.recovery.volume_timeout,
        fence_command=conf.recovery.fence_check_command,
        fence_timeout=conf.recovery.fence_check_timeout,
        claim_lease=float(conf.recovery.claim_lease_seconds),
        require_instance_disk=conf.recovery.require_instance_disk,
        rebuild_missing_disks=args.rebuild_missing_disks,
    )
    # One run per target host at a time (a dry run changes nothing: it needs no lock).
    with contextlib.nullcontext() if options.dry_run else run_lock(conf.state_path, host):
        report = _recover(conf, args, host, options, nova_url)
    if args.format == "json":
        import json

        print(scrub(json.dumps(report.as_dict(), indent=2, default=str)))
    else:
        print(scrub("\n".join(report_lines(report))))
    return report.exit_code if report.instances or not options.dry_run else 0


def _recover(conf: cfg.ConfigOpts, args: argparse.Namespace, host: str,
             options: RecoveryOptions, nova_url: str | None) -> RecoveryReport:
    """Open the store, source and driver; run the recovery."""
    from virt.driver import load_driver
    from virt.recovery.engine import Recoverer
    from virt.recovery.journal import RecoveryJournal
    from virt.recovery.sources import InstanceSource, NovaSource, StoreSource
    from virt.store import Store

    store = Store.from_conf(conf)
    try:
        image_dir = args.nova_image_dir or conf.recovery.nova_image_dir
        source: InstanceSource = (NovaSource(nova_url, image_dir=image_dir) if nova_url
                                  else StoreSource(store))
        driver = load_driver(conf.compute_driver, conf)
        driver.init_host(host=host)

        def host_status(name: str) -> str | None:
            try:
                return store.get_host(name).status
            except VirtError:
                return None

        recoverer = Recoverer(
            driver=driver, source=source, journal=RecoveryJournal(store, host=host),
            host=host, options=options, host_status=host_status,
            progress=_progress_bar() if args.format != "json" and sys.stderr.isatty() else None,
        )
        return recoverer.run()
    finally:
        store.close()


def _progress_bar() -> Callable[[InstanceReport, int, int], None]:
    """A one-line progress bar on stderr (terminal only)."""

    def show(item: InstanceReport, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                         f"{item.outcome:<9} {item.name[:30]:<30}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["EXIT_FAILED", "main"]
