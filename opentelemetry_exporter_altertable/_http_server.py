"""The threaded HTTP server both listeners (the local receiver, the OTLP bridge) stand on.

One job: keep track of the open connections, so a server can stop promptly. A keep-alive
connection's handler thread blocks reading the next request; on stop, its socket is shut down
for reading (the read sees EOF) instead of waiting out the idle timeout. It also binds without
``HTTPServer``'s reverse DNS lookup (``getfqdn``), which is slow and tells us nothing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

_logger = logging.getLogger(__name__)


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive with the server's idle timeout, and no Nagle delay.

    Answers go out in one write; with Nagle's algorithm on, a keep-alive client's delayed ACK
    would still cost about 40 ms per request.
    """

    protocol_version = "HTTP/1.1"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(cast(TrackingHTTPServer, self.server).idle_timeout)
        with contextlib.suppress(OSError):  # not TCP, e.g. a Unix socket
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TrackingHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that knows its open connections (IPv4 or IPv6)."""

    daemon_threads = True
    request_queue_size = 128
    idle_timeout: float | None = None
    """How long a keep-alive connection may sit idle before its handler gives up."""

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._idle = threading.Condition()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._idle:
                self._connections.discard(request)
                self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        _logger.debug("connection from %s failed", client_address, exc_info=True)

    def end_idle_connections(self) -> None:
        """Wake handler threads blocked reading the next request (their reads see EOF)."""
        with self._idle:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every connection is closed; False if ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._connections, timeout)
