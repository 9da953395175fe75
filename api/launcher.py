"""The service launcher: ``python -m api prepare`` readies the storage; ``python -m api serve`` also starts Uvicorn."""

from __future__ import annotations

import argparse
import logging.config
import sys

from api.logs import logging_config
from api.settings import CONNECTION_DRAIN_SECONDS, SettingsError, settings_or_exit, warn_unknown_variables
from api.startup import StartupError, prepare_storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "serve", "worker"])
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker: pool processes on this host (default ETL_WORKER_CONCURRENCY)")
    parser.add_argument("--name", default=None, help="worker: this worker host's name (default the host name)")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    warn_unknown_variables()
    if args.command == "worker":
        return _worker(settings, args.concurrency or settings.worker_concurrency, args.name)
    try:
        prepare_storage(settings)
    except SettingsError as exc:
        print(f"etl-task-api: invalid settings: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"etl-task-api: cannot start: {exc}", file=sys.stderr)
        return 1
    if args.command == "serve":
        import uvicorn

        from api.header_timeout import UVICORN_HTTP

        uvicorn.run(
            "api.main:app",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=logging_config(settings.log_level, settings.log_format),
            timeout_graceful_shutdown=CONNECTION_DRAIN_SECONDS,
            # The request-head timeout; the client address is the app's to decide (ETL_TRUSTED_PROXIES).
            http=UVICORN_HTTP,
            proxy_headers=False,
        )
    return 0


def _worker(settings, concurrency: int, name: str | None) -> int:
    """A Celery worker host (scale-out mode; Linux only: it relies on fork and PR_SET_PDEATHSIG)."""
    if settings.backend != "celery":
        print("etl-task-api: `worker` needs ETL_BACKEND=celery and ETL_REDIS_URL", file=sys.stderr)
        return 2
    if not sys.platform.startswith("linux"):
        print("etl-task-api: worker hosts run on Linux only", file=sys.stderr)
        return 2
    from api.celery_worker import configure, worker_argv

    configure(settings).worker_main(worker_argv(settings, concurrency, name))
    return 0
