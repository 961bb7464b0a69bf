"""A stand-in dockerd on a Unix socket: canned answers per route, or no answer at all."""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: A route's answer: (HTTP status, JSON body), or HANG to read the request and never reply.
Answer = tuple[int, Any]
HANG: Answer = (0, None)
Route = Callable[[dict[str, list[str]], Any], Answer]


class FakeDockerd:
    """Serves `routes` ({(method, path regex): route}) on the Unix socket `path`.

    Paths are matched without the /v1.xx prefix; every request is recorded in `requests`
    as (method, path, query, JSON body). Unknown routes answer 404.
    """

    def __init__(self, path: str, routes: dict[tuple[str, str], Route]) -> None:
        self.url = f"unix://{path}"
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.released = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def _answer(self, method: str) -> None:
                url = urlsplit(self.path)
                path = re.sub(r"^/v[0-9.]+", "", url.path)
                query = parse_qs(url.query)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                fake.requests.append((method, path, query, body))
                status, payload = next(
                    (route(query, body) for (verb, pattern), route in routes.items()
                     if verb == method and re.fullmatch(pattern, path)),
                    (404, {"message": f"page not found: {path}"}),
                )
                if (status, payload) == HANG:
                    fake.released.wait(30)
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDockerd:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method: str, pattern: str) -> list[tuple[dict[str, list[str]], Any]]:
        """(query, body) of the recorded requests to `pattern`."""
        return [(q, b) for m, p, q, b in self.requests if m == method and re.fullmatch(pattern, p)]
