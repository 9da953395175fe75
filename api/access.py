"""The Gunicorn workers' access log: Uvicorn's line for every answer, built directly and written in batches.

Uvicorn's own access log goes through ``logging`` for every request (a LogRecord, the formatter's
time formatting, a locked write and flush of stdout): about a third of the CPU a ``/livez`` answer
costs. This builds the same line from the values the request already carries and writes the lines
of half a second (or 64 lines) at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.parse
from typing import TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FLUSH_SECONDS = 0.5
FLUSH_LINES = 64


class AccessLog:
    """ASGI wrapper writing ``<time> ACCESS [<pid>] <client> - "<method> <path> HTTP/<v>" <status>`` lines."""

    def __init__(self, app: ASGIApp, stream: TextIO | None = None) -> None:
        self.app = app
        self.stream = stream or sys.stdout
        self.lines: list[str] = []
        self._second = -1
        self._prefix = ""
        self._flush_scheduled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flushing_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_logged(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.add(scope, message["status"])  # at the start of the answer, as Uvicorn does
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except BaseException:
            if not started:
                self.add(scope, 500)  # the server answers 500 for an app that raised before answering
            raise

    def _flushing_on_shutdown(self, send: Send) -> Send:
        async def send_then_flush(message: Message) -> None:
            if message["type"].startswith("lifespan.shutdown"):
                self.flush()
            await send(message)

        return send_then_flush

    def add(self, scope: Scope, status: int) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the same text as logging's default asctime, formatted once a second
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        client = scope.get("client")
        path = urllib.parse.quote(scope.get("root_path", "") + scope["path"])
        if scope.get("query_string"):
            path = f"{path}?{scope['query_string'].decode('ascii', 'replace')}"
        self.lines.append(f"{self._prefix},{int((now - second) * 1000):03d} ACCESS [{os.getpid()}] "
                          f"{'%s:%d' % tuple(client) if client else ''} - \"{scope['method']} {path} "
                          f"HTTP/{scope['http_version']}\" {status}\n")
        if len(self.lines) >= FLUSH_LINES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self.lines:
            return
        text, self.lines = "".join(self.lines), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed or gone (the master is shutting down): access lines are not worth a failure
