"""The Gunicorn worker classes: Uvicorn's or Gunicorn's own ASGI worker, with the service's connection rules.

Both get a bounded connection drain on shutdown (Uvicorn's), the request-head timeout
(api.header_timeout), and no rewriting of the client address from X-Forwarded-For: the app
decides that from ETL_TRUSTED_PROXIES (api.deps.client_of). Uvicorn's access log is replaced by
api.access (the same lines for a fraction of the CPU). Uvicorn's worker ends the open event
streams when it starts to stop, so they do not hold the drain for its whole length.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from gunicorn.arbiter import Arbiter
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi
from uvicorn_worker import UvicornWorker as _UvicornWorker

from api.access import AccessLog
from api.events import end_open_streams
from api.header_timeout import UVICORN_HTTP, HeadTimeout
from api.settings import CONNECTION_DRAIN_SECONDS


class _StreamEndingServer(uvicorn.Server):
    async def shutdown(self, sockets: Any = None) -> None:
        # An event stream never ends by itself: without this, each one held the stop for the
        # whole drain (CONNECTION_DRAIN_SECONDS) and was then cut. Ended, it lets the drain finish.
        end_open_streams()
        await super().shutdown(sockets)


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "timeout_graceful_shutdown": CONNECTION_DRAIN_SECONDS,
        "http": UVICORN_HTTP,
        "proxy_headers": False,
        "access_log": False,
    }

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if self.cfg.accesslog:
            self.wsgi = AccessLog(self.wsgi)

    async def _serve(self) -> None:
        # uvicorn_worker's own, with the server above (the version is pinned in requirements.txt).
        self.config.app = self.wsgi
        server = _StreamEndingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class TimedASGIProtocol(HeadTimeout, ASGIProtocol):
    """Gunicorn's ASGI protocol with the request-head timeout."""


class ASGIWorker(gasgi.ASGIWorker):
    def init_process(self) -> None:
        # gasgi builds its protocol as `lambda: ASGIProtocol(self)`, looked up in the module when
        # each connection opens; this worker process is the only reader of that name.
        gasgi.ASGIProtocol = TimedASGIProtocol
        super().init_process()
