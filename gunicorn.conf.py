"""Gunicorn settings and hooks (Linux/macOS). Every value comes from the ETL_* settings."""

from api.logs import logging_config
from api.settings import SettingsError, settings_or_exit
from api.startup import StartupError, mark_worker_lost, prepare_storage

_settings = settings_or_exit()

wsgi_app = "api.main:app"
bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "api.worker.UvicornWorker" if _settings.worker_class == "uvicorn" else "asgi"
# A worker's event loop never blocks this long; the master restarts one that does.
timeout = 60
graceful_timeout = int(_settings.graceful_timeout_seconds)
# Never recycle workers: recycling would kill the task threads they run.
max_requests = 0
max_requests_jitter = 0
keepalive = 5
accesslog = "-"
logconfig_dict = logging_config(_settings.log_level, _settings.log_format)
proc_name = "etl-task-api"
# The control socket is not used, and two servers on one machine would fight over its path.
control_socket_disable = True


def on_starting(server):
    try:
        prepare_storage(_settings)
    except SettingsError as exc:
        server.log.error("invalid settings: %s", exc)
        raise SystemExit(2) from None
    except StartupError as exc:
        server.log.error("cannot start: %s", exc)
        raise SystemExit(1) from None


def child_exit(server, worker):
    # Speeds up worker-loss detection; heartbeats catch it too, without Gunicorn.
    try:
        lost = mark_worker_lost(_settings, worker.pid)
    except Exception as exc:
        server.log.warning("could not mark tasks of worker %s lost: %s", worker.pid, exc)
        return
    if lost:
        server.log.warning("worker %s died; marked %d running task(s) failed (WorkerLost)", worker.pid, len(lost))
