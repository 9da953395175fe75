"""The request-head timeout: a connection that sends no complete request head in time is closed.

Neither Uvicorn (0.54: ``timeout_keep_alive`` starts only after a response and is cancelled by any
byte received) nor Gunicorn's ASGI worker (its keep-alive timer waits only for a second request)
bounds how long a client may take to send the head of a request, so sockets that send nothing,
or a head a byte at a time, are held open for ever (slowloris). The mixin arms a timer when a
connection opens, and on Uvicorn again when a response leaves the connection idle; the timer is
disarmed once the bytes received hold the blank line that ends a request head, so a long body,
a long-poll or a stream is never cut by it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


@functools.cache
def header_timeout_seconds() -> float:
    from api.settings import get_settings

    return get_settings().header_timeout_seconds


class HeadTimeout:
    """Mixed into an asyncio HTTP protocol (before it in the bases) to bound the wait for a request head."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_waiting = False
    _head_tail = b""
    _head_transport: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_transport = transport
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_waiting:
            window = self._head_tail + data
            if any(end in window for end in HEAD_ENDS):
                self._disarm_head_timer()
            else:
                self._head_tail = window[-3:]
        super().data_received(data)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_waiting = True
        self._head_tail = b""
        self._head_timer = asyncio.get_running_loop().call_later(header_timeout_seconds(), self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        self._head_waiting = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self._head_transport
        if self._head_waiting and transport is not None and not transport.is_closing():
            logger.debug("closing a connection that sent no complete request head in %.1f s", header_timeout_seconds())
            transport.close()


def _uvicorn_base() -> type:
    # What Uvicorn's "auto" picks: httptools when it is installed, h11 otherwise.
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


class UvicornHttpProtocol(HeadTimeout, _uvicorn_base()):  # type: ignore[misc]
    """Uvicorn's HTTP protocol with the request-head timeout (``uvicorn.run(http=...)``)."""

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Uvicorn arms its keep-alive timer only when nothing is pipelined behind the response, and
        # cancels it at the first byte of the next request: from then on the head timer takes over.
        if self.timeout_keep_alive_task is not None:
            self._arm_head_timer()


UVICORN_HTTP = f"{__name__}:UvicornHttpProtocol"
