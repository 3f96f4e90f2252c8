"""A load balancer for tests: every request to the next listener in turn, the way HAProxy's ``balance roundrobin``
with ``option http-server-close`` spreads them, so no device's two messages meet the same listener by luck.

A listener that refuses the connection or drops it before answering is marked down and the request is sent to the
next one (HAProxy's ``retry-on conn-failure empty-response`` with ``option redispatch``). Responses, image
downloads included, are streamed through. Loopback only.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import itertools
import threading
from typing import Callable

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class RoundRobin:
    def __init__(self, ports: list[int], on_request: Callable[[int], None] = lambda count: None):
        self.ports = list(ports)
        self.down: set[int] = set()
        self.sent: dict[int, int] = {port: 0 for port in ports}  # requests each listener answered
        self.retried = 0
        self.paths: collections.Counter[str] = collections.Counter()  # answered requests by path (no query)
        self.on_request = on_request
        self._turn = itertools.count()
        self._lock = threading.Lock()
        balancer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                balancer.forward(self)

            do_GET = do_POST = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self, tried: set[int]) -> int | None:
        with self._lock:
            for _ in range(len(self.ports)):
                port = self.ports[next(self._turn) % len(self.ports)]
                if port not in self.down and port not in tried:
                    return port
        return None

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            count = sum(self.sent.values())
        self.on_request(count)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        tried: set[int] = set()
        while (port := self._next(tried)) is not None:
            tried.add(port)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request(handler.command, handler.path, body=body, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException):
                connection.close()
                with self._lock:
                    self.down.add(port)
                    self.retried += 1
                continue
            with self._lock:
                self.sent[port] += 1
                self.paths[handler.path.split("?")[0].rsplit("/", 1)[0] if "?" in handler.path else handler.path] += 1
            try:
                handler.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP | {"date", "server"}:
                        handler.send_header(name, value)
                handler.end_headers()
                while handler.command != "HEAD" and (piece := response.read(256 * 1024)):
                    handler.wfile.write(piece)
            finally:
                connection.close()
            return
        handler.send_error(503, "no listener up")
