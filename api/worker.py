"""The Gunicorn worker classes: Uvicorn's or Gunicorn's own ASGI worker, with the service's connection rules.

Both get a bounded connection drain on shutdown (Uvicorn's), the request-head timeout
(api.header_timeout), and no rewriting of the client address from X-Forwarded-For: the app
decides that from ETL_TRUSTED_PROXIES (api.deps.client_of). Uvicorn's access log is replaced by
api.access (the same lines for a fraction of the CPU).
"""

from __future__ import annotations

from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi
from uvicorn_worker import UvicornWorker as _UvicornWorker

from api.access import AccessLog
from api.header_timeout import UVICORN_HTTP, HeadTimeout
from api.settings import CONNECTION_DRAIN_SECONDS


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


class TimedASGIProtocol(HeadTimeout, ASGIProtocol):
    """Gunicorn's ASGI protocol with the request-head timeout."""


class ASGIWorker(gasgi.ASGIWorker):
    def init_process(self) -> None:
        # gasgi builds its protocol as `lambda: ASGIProtocol(self)`, looked up in the module when
        # each connection opens; this worker process is the only reader of that name.
        gasgi.ASGIProtocol = TimedASGIProtocol
        super().init_process()
