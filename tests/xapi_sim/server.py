"""XML-RPC over HTTP(S) on a loopback port: the wire the XenAPI SDK speaks.

POST / carries a methodCall; the answer is XAPI's `{Status, Value | ErrorDescription}`
struct. A `drop` fault closes the connection without an answer (note that Python's
xmlrpc transport re-sends a request once when a kept-alive connection is closed under it, as
the SDK does against a real XAPI).
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import threading
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .core import Core
from .faults import DropConnection

LOG = logging.getLogger(__name__)
BODY_MAX = 64 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no delayed-ACK stall
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= BODY_MAX:
            self._send(400, b"bad request\n", "text/plain")
            return
        body = self.rfile.read(length)
        try:
            params, method = xmlrpc.client.loads(body, use_builtin_types=False)
        except Exception:  # malformed XML: XAPI answers with an HTTP error page
            self._send(500, b"<html><body>Malformed XML-RPC request</body></html>\n",
                       "text/html")
            return
        try:
            answer = self.server.core.api.response(str(method), tuple(params))
        except DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        except Exception as exc:  # a simulator bug: still answer as xapi does
            LOG.exception("%s", method)
            answer = {"Status": "Failure", "ErrorDescription": ["INTERNAL_ERROR", str(exc)]}
        out = xmlrpc.client.dumps((answer,), methodresponse=True, allow_none=False)
        self._send(200, out.encode("utf-8"), "text/xml")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    core: Core


class XapiSimulator:
    """A simulated XAPI host on 127.0.0.1; `url` is what `XenAPI.Session(url)` takes.

    `tls=(certfile, keyfile)` serves HTTPS; `xenstore` is the path of a xenstored socket the
    dom0 plugins and the domains' trees use; `core` holds the database (`core.db`), the
    fault plan (`core.faults`) and the log of method names called (`core.api.calls`).
    """

    def __init__(self, *, password: str, user: str = "root", host: str = "127.0.0.1",
                 port: int = 0, tls: tuple[str, str] | None = None,
                 xenstore: str | None = None, suspend_sr: bool = False,
                 first_domid: int = 1) -> None:
        self.core = Core(user=user, password=password, xenstore=xenstore,
                         suspend_sr=suspend_sr, first_domid=first_domid)
        self._server = _Server((host, port), _Handler)
        self._server.core = self.core
        self._tls = tls is not None
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"{'https' if self._tls else 'http'}://{name}:{port}/"

    def start(self) -> XapiSimulator:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="xapi-sim", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.core.close()

    def __enter__(self) -> XapiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[str, str]:
    """A self-signed certificate for `host` (openssl); (certfile, keyfile), the key 0600."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "xapi-cert.pem", d / "xapi-key.pem"
    if not (cert.exists() and key.exists()):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
             "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        key.chmod(0o600)
    return str(cert), str(key)
