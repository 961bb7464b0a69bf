"""Run the simulator as a service: `python -m tests.xapi_sim --password-file F [--port N]`.

The password is read from a file (never argv); the URL is printed on stdout and written to
`--url-file` once the port listens.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .server import XapiSimulator, make_cert


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.xapi_sim")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user", default="root")
    p.add_argument("--password-file", required=True)
    p.add_argument("--url-file")
    p.add_argument("--tls-dir", help="serve HTTPS with a self-signed certificate kept here")
    p.add_argument("--xenstore", help="xenstored socket for the dom0 plugins")
    p.add_argument("--suspend-sr", action="store_true")
    p.add_argument("--first-domid", type=int, default=1,
                   help="domids from here (keep clear of a real store's own domains)")
    p.add_argument("--check", action="store_true",
                   help="log in to the simulator at --url-file and out again (exit 0 if it answers)")
    p.add_argument("--ca-file", help="with --check: the certificate to verify HTTPS with")
    args = p.parse_args(argv)
    password = Path(args.password_file).read_text().strip()
    if args.check:
        return _check(Path(args.url_file).read_text().strip(), args.user, password, args.ca_file)
    tls = make_cert(args.tls_dir, args.host) if args.tls_dir else None
    sim = XapiSimulator(password=password, user=args.user, host=args.host, port=args.port,
                        tls=tls, xenstore=args.xenstore, suspend_sr=args.suspend_sr,
                        first_domid=args.first_domid)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    if args.url_file:
        Path(args.url_file).write_text(sim.url + "\n")
    print(sim.url, flush=True)
    stop.wait()
    sim.stop()
    return 0


def _check(url: str, user: str, password: str, ca_file: str | None) -> int:
    import ssl
    import xmlrpc.client

    import XenAPI

    transport = None
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=ca_file)
        transport = xmlrpc.client.SafeTransport(context=ctx)
    session = XenAPI.Session(url, transport=transport)
    try:
        session.login_with_password(user, password, "1.0", "testbed-check")
        session.xenapi.session.logout()
    except Exception as exc:  # the reason, never the password
        print(f"xapi simulator at {url}: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
