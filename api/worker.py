"""The Gunicorn worker class: Uvicorn's, with a bounded connection drain on shutdown."""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker

from api.settings import CONNECTION_DRAIN_SECONDS


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {**_UvicornWorker.CONFIG_KWARGS, "timeout_graceful_shutdown": CONNECTION_DRAIN_SECONDS}
