"""The Gunicorn worker class: Uvicorn's, with a bounded connection drain on shutdown."""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker

# Long-polls (GET /status?wait=60) must not hold up shutdown: after this many seconds open
# connections are closed, so the lifespan shutdown can stop the running steps in time.
CONNECTION_DRAIN_SECONDS = 5


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {**_UvicornWorker.CONFIG_KWARGS, "timeout_graceful_shutdown": CONNECTION_DRAIN_SECONDS}
