"""An HTTP proxy in front of an S3-compatible server that injects the faults of a flaky object store.

Each request is read whole, then either relayed upstream or met with the next matching fault: a connection
reset, a 503 SlowDown with Retry-After, a body cut short, a stall, or (for a window of time) a closed port
that refuses connections. Used by `tests/test_faults.py` and `benchmarks/faults.py`.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

FaultKind = Literal["reset", "slowdown", "truncate", "stall"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    kind: FaultKind
    """reset: the connection is reset once the request was read; slowdown: 503 SlowDown with Retry-After;
    truncate: the response is relayed with half its body, then the connection closed; stall: nothing is
    answered for `seconds`, then the connection is closed."""
    times: int | None = 1
    """How many requests it hits (None: every matching request until cleared)."""
    method: str | None = None
    """Only requests of this HTTP method (None: any)."""
    min_bytes: int = 0
    """Only requests whose body (reset, stall, slowdown) or response body (truncate) has at least this many bytes."""
    path_contains: str = ""
    """Only requests whose path contains this."""
    seconds: float = 0.0
    """How long a stall lasts."""
    retry_after: float = 0.5
    """Seconds a slowdown asks the client to wait."""


class FaultProxy:
    """Listens on 127.0.0.1 and relays to `upstream` (http://host:port), injecting the faults it is given."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[Fault] = []
        self.injected: Counter[str] = Counter()
        """Faults injected so far, by kind (`refused` counts refusal windows)."""
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server = self._listen(0)
        self.port = self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def refuse(self, seconds: float) -> None:
        """Close the port (and every open connection, as a restarting server would) for `seconds`, in the
        background; connections are refused meanwhile."""
        self.injected["refused"] += 1
        self._close()
        threading.Timer(seconds, self._reopen).start()

    def _reopen(self) -> None:
        self._server = self._listen(self.port)

    def _close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # wakes its handler, blocked reading the next request
                except OSError:
                    pass
                _reset(connection)

    def stop(self) -> None:
        self._close()

    def take(self, method: str, path: str, request_bytes: int) -> Fault | None:
        """The fault this request meets, if any (used up by one)."""
        with self._lock:
            for fault in self.faults:
                if fault.method not in (None, method) or fault.path_contains not in path:
                    continue
                if fault.kind != "truncate" and request_bytes < fault.min_bytes:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                self.injected[fault.kind] += 1
                return fault
        return None


def _reset(connection: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset by peer'."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with proxy._lock:
                proxy._connections.add(self.connection)

        def finish(self) -> None:
            with proxy._lock:
                proxy._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            return

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay(self) -> None:
            try:
                self._answer()
            except OSError:  # the client gave up (its timeout) or the port was closed under it
                self.close_connection = True

        def _answer(self) -> None:
            body = self._body()
            fault = proxy.take(self.command, self.path, len(body))
            if fault is not None and fault.kind == "reset":
                _reset(self.connection)
                self.close_connection = True
                return
            if fault is not None and fault.kind == "stall":
                time.sleep(fault.seconds)
                _reset(self.connection)
                self.close_connection = True
                return
            if fault is not None and fault.kind == "slowdown":
                self._slowdown(fault.retry_after)
                return
            status, reason, headers, answer = self._upstream(body)
            cut = fault is not None and fault.kind == "truncate" and len(answer) >= max(fault.min_bytes, 2)
            self.send_response(status, reason)
            head = self.command == "HEAD"  # its Content-Length is the object's, with no body
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and (head or name.lower() != "content-length"):
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer[: len(answer) // 2] if cut else answer)
            if cut:
                self.wfile.flush()
                _reset(self.connection)
                self.close_connection = True

        def _slowdown(self, retry_after: float) -> None:
            answer = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Slow down</Message></Error>"
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Retry-After", f"{retry_after:g}")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def _upstream(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            connection.close()
            return response.status, response.reason, response.getheaders(), answer

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Relay
