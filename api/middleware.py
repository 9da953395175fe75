"""ASGI middleware: the Host and Origin checks, the request body limit and headers every answer carries."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.settings import Settings
from api.trust import OPEN_PATHS, UNSAFE_METHODS, HostRules, client_address

logger = logging.getLogger(__name__)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}, ensure_ascii=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostAndOriginGuard:
    """400 for a ``Host`` that is not this server's; 403 for a state change sent by a foreign web page."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        self._settings = settings

    @functools.cached_property
    def rules(self) -> HostRules:
        return HostRules(self._settings())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        host = origin = fetch_site = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"sec-fetch-site":
                fetch_site = value.decode("latin-1")
        rules = self.rules
        refusal = None
        if host is not None and not rules.host_allowed(host):
            refusal = (400, (f"The Host '{host[:200]}' is not a name of this server (a web page reaching it "
                             "through DNS rebinding looks like this). If clients use that name, add it to "
                             "ETL_ALLOWED_HOSTS."))
        elif scope["type"] == "websocket" or scope["method"] in UNSAFE_METHODS:
            if origin is not None:
                if not rules.origin_allowed(origin, host):
                    refusal = (403, (f"Cross-site request refused: the Origin '{origin[:200]}' is not this "
                                     "server's origin; list it in ETL_CORS_ORIGINS if that site may use the API."))
            elif fetch_site == "cross-site":
                refusal = (403, ("Cross-site request refused: a page on another site sent it "
                                 "(Sec-Fetch-Site: cross-site)."))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        self._audit(scope, refusal)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal[1][:120]})
            return
        await _answer(send, *refusal)

    def _audit(self, scope: Scope, refusal: tuple[int, str]) -> None:
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is None:
            return
        peer = scope["client"][0] if scope.get("client") else None
        forwarded = [v.decode("latin-1") for n, v in scope["headers"] if n == b"x-forwarded-for"]
        services.audit.record("denied", None, client_address(peer, forwarded, services.settings),
                              method=scope.get("method", "WEBSOCKET"), path=scope["path"][:500],
                              status=refusal[0], reason=refusal[1])


class BodyLimitAndHeaders:
    """413 for bodies over ``max_bytes`` (declared or chunked); security headers on every answer."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self._max_bytes = max_bytes

    @functools.cached_property
    def max_bytes(self) -> int:
        return self._max_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._too_large(send_with_headers)
                    return
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True

        if not chunked and (declared is not None or scope["method"] not in UNSAFE_METHODS):
            # The server holds a body to its declared length, checked above.
            await self.app(scope, receive, send_with_headers)
            return
        # A chunked body has no declared length: read it here, up to the limit, so that a body too
        # large is a 413 and not an error inside the framework's body parsing (a 400).
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._too_large(send_with_headers)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    async def _too_large(self, send: Send) -> None:
        await _answer(send, 413, f"The request body is larger than the limit of {self.max_bytes} bytes.")
