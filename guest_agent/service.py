"""`virtkit-agent`: the guest service loop over the configured transport.

Exit codes: 0 stopped cleanly (or `--once` done), 1 the transport could not be used,
2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from guest_agent import __version__
from guest_agent.commands import CommandHandler
from guest_agent.config import AgentConfig, ConfigError, load
from guest_agent.passwords import PasswordSetter, make_setter
from guest_agent.transports.virtio_serial import VirtioSerialTransport
from guest_agent.transports.xenbus import XenbusTransport
from guest_agent.wire import XENBUS_DEVICE, XenstoreClient, XenstoreError

LOG = logging.getLogger("guest_agent")

# Neither transport works on Windows yet. A virtio-serial port there needs overlapped I/O
# (all I/O on a synchronous handle is serialized: a pending read would block every reply),
# and Windows guests reach xenstore through WMI or xenstore_client.exe, not the xenbus wire
# protocol XenstoreClient speaks.
NO_WINDOWS_TRANSPORT = (
    "no transport for Windows guests yet: only the Windows password setter exists"
)


class AgentService:
    """One handler, one transport, one stop event: what `virtkit-agent` runs."""

    def __init__(self, config: AgentConfig, *, setter: PasswordSetter | None = None) -> None:
        self.config = config
        self.handler = CommandHandler(config, setter or make_setter(config))
        self.stop_event = threading.Event()
        self.transport: XenbusTransport | VirtioSerialTransport
        if config.transport == "virtio-serial":
            self.transport = VirtioSerialTransport(
                config.virtio_port, poll_interval=config.poll_interval
            )
        else:
            path = config.xenstore_path or os.environ.get("XENSTORED_PATH") or XENBUS_DEVICE
            self.transport = XenbusTransport(
                lambda: XenstoreClient(path, timeout=config.xenstore_timeout),
                poll_interval=config.poll_interval,
            )

    def run(self) -> None:
        """Serve until stop() is called."""
        LOG.info("virtkit-agent %s serving over %s", __version__, self.config.transport)
        self.transport.serve(self.handler, self.stop_event)

    def run_once(self) -> int:
        """Answer the requests pending now (xenstore only); returns how many."""
        if not isinstance(self.transport, XenbusTransport):
            raise ConfigError("--once works with the xenstore transport only")
        return self.transport.process_pending(self.handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="virtkit-agent", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtkit-agent", description="virtkit guest agent")
    parser.add_argument(
        "--config", help="INI file with an [agent] section (default /etc/virtkit-agent.conf)"
    )
    parser.add_argument("--transport", choices=("xenstore", "virtio-serial"))
    parser.add_argument("--xenstore-path", help="xenbus device or xenstored socket")
    parser.add_argument("--virtio-port", help="virtio-serial port device (or socket)")
    parser.add_argument("--once", action="store_true", help="answer pending requests and exit")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--version", action="version", version=f"virtkit-agent {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load(args.config).with_overrides(
            transport=args.transport,
            xenstore_path=args.xenstore_path,
            virtio_port=args.virtio_port,
            log_level=args.log_level,
        )
    except ConfigError as exc:
        print(f"virtkit-agent: {exc}", file=sys.stderr)
        return 2
    if sys.platform == "win32":
        print(f"virtkit-agent: {NO_WINDOWS_TRANSPORT}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    service = AgentService(config)
    try:
        if args.once:
            count = service.run_once()
            LOG.info("answered %d request(s)", count)
            return 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: service.stop())
        service.run()
    except ConfigError as exc:
        print(f"virtkit-agent: {exc}", file=sys.stderr)
        return 2
    except (XenstoreError, OSError) as exc:
        print(f"virtkit-agent: cannot use the transport: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
