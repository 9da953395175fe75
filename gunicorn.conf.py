"""Gunicorn settings and hooks (Linux/macOS). Every value comes from the ETL_* settings."""

from api.logs import logging_config
from api.settings import SettingsError, is_loopback, settings_or_exit, warn_unknown_variables
from api.startup import StartupError, mark_worker_lost, prepare_storage

_settings = settings_or_exit()

wsgi_app = "api.main:app"
bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "api.worker.UvicornWorker" if _settings.worker_class == "uvicorn" else "api.worker.ASGIWorker"
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


def _bind_host(address):
    if address.startswith(("unix:", "fd://")):
        return None  # local to this machine
    if address.startswith("["):
        return address[1:address.find("]")]
    return address.rsplit(":", 1)[0] if ":" in address else address


def on_starting(server):
    warn_unknown_variables()
    # ETL_HOST is checked with the settings; a `-b` on the command line must not bypass that rule.
    if not _settings.api_keys_configured:
        for address in server.cfg.bind:
            host = _bind_host(address)
            if host is not None and not is_loopback(host):
                server.log.error("invalid settings: refusing to bind to %s without API keys: set ETL_API_KEYS "
                                 "(or ETL_API_KEYS_FILE), or bind to 127.0.0.1", host)
                raise SystemExit(2)
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
