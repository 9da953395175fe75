"""Logging configuration for the entry points (Gunicorn and the Windows launcher), never for libraries."""

from __future__ import annotations

import json
import logging
from typing import Any

from etl import runtime, secrets

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s [%(task_id)s] %(message)s"


class TaskIdFilter(logging.Filter):
    """Adds ``task_id`` to every record: the id of the task whose thread logged it, or '-'."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = runtime.current()
        record.task_id = context.task_id if context else "-"
        return True


class MaskingFormatter(logging.Formatter):
    """Text lines with every resolved secret value replaced by ***."""

    def format(self, record: logging.LogRecord) -> str:
        return secrets.mask_text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (ETL_LOG_FORMAT=json), secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "task_id": getattr(record, "task_id", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Masked before encoding: JSON escapes a secret holding " or \\, and the escaped form would slip past.
        return json.dumps(secrets.mask_values(entry), ensure_ascii=False)


def logging_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """The whole logging set-up: the server log shows ``level`` and above, for every logger.

    The ``etl`` loggers pass INFO on whatever ``level`` is, because task logs (the runner's handler
    on the root logger) keep a step's INFO lines; the console handler filters them by ``level``.
    """
    etl_level = level if logging.getLevelName(level) < logging.INFO else "INFO"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"task_id": {"()": TaskIdFilter}},
        "formatters": {
            "default": {"()": JsonFormatter} if fmt == "json" else {"()": MaskingFormatter, "format": FORMAT},
            "access": {"format": "%(asctime)s ACCESS [%(process)d] %(message)s"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["task_id"],
                        "stream": "ext://sys.stderr", "level": level},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
        },
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "etl": {"level": etl_level},
            "gunicorn.error": {"level": level, "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": ["console"], "propagate": False},
            "uvicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }
