"""Who the viewer answers: requests addressed to the name it was bound to, and writes that carry its token.

A page of any site can make the browser send requests to localhost; a site whose DNS name is re-pointed at
127.0.0.1 (DNS rebinding) even reads the answers, but its requests still say its own name in `Host`, so a
server bound to loopback answers only loopback names. Bound to any other address the viewer is reachable
from the network: reads stay open (it is a viewer), and every write (POSTs and DELETEs: supernodes, pinned
sets, model runs) needs the token, sent as `Authorization: Bearer <token>`; pages opened with `?token=...`
keep it in the browser and send it.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
READ_METHODS = (b"GET", b"HEAD", b"OPTIONS")


@dataclass(frozen=True)
class Access:
    hosts: tuple[str, ...] | None = LOOPBACK_NAMES
    """Host names (without port) the server answers; None: any."""
    token: str | None = None
    """What every write must carry; None: writes need none (loopback only)."""

    @classmethod
    def for_address(cls, host: str, token: str | None) -> Access:
        """Loopback: loopback names only, a token if one is given. Any other address: any name, and a token
        always (a new one when none is given: `serve` prints it)."""
        if is_loopback(host):
            return cls(LOOPBACK_NAMES, token)
        return cls(None, token or secrets.token_urlsafe(18))


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def _host_name(header: str) -> str:
    """`Host` without its port: '127.0.0.1:8080' → '127.0.0.1', '[::1]:8080' → '::1'."""
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Guard:
    """ASGI middleware refusing requests to other names (421) and writes without the token (401)."""

    def __init__(self, app, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                status, message = refusal
                body = json.dumps({"error": message}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> tuple[int, str] | None:
        headers = dict(scope["headers"])
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if self.access.hosts is not None and host not in self.access.hosts:
            return 421, f"this server answers requests to {', '.join(self.access.hosts)}, not {host!r}"
        if self.access.token is None or scope["method"].encode() in READ_METHODS:
            return None
        given = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.access.token.encode()):
            return 401, "this server needs its token for writes: open the page from the address `serve` printed"
        return None


def guarded(app, access: Access) -> _Guard:
    return _Guard(app, access)
