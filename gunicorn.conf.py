"""Gunicorn settings and hooks (Linux/macOS). Every value comes from the ETL_* settings."""

import ctypes
import gc
import os
import platform
import threading
import time

from api.logs import logging_config
from api.settings import SettingsError, is_loopback, settings_or_exit, warn_unknown_variables
from api.startup import StartupError, mark_worker_lost, prepare_storage

_settings = settings_or_exit()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc():
    """The C library when it is glibc (malloc tuning below is glibc's), else None."""
    # Arrow's default pool (mimalloc) keeps the pages of freed buffers; glibc's are trimmed below.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read when pyarrow is imported below
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):  # glibc < 2.33
        return None
    libc.mallinfo2.restype = _MallInfo2
    # Every thread that allocates would get an arena of its own, each keeping its freed chunks.
    libc.mallopt(-8, 2)  # M_ARENA_MAX
    return libc


_libc = _glibc()
# A finished step leaves its freed arrays inside glibc's heaps; give them back once this much is free.
TRIM_FREE_BYTES = 16 * 1024 * 1024
TRIM_CHECK_SECONDS = 1.0


# A step that held this much more than before (sampled every check) is "large": once it and every
# other task of the worker ended, the cycles it left are collected and the freed memory given back
# at once, whatever the amount. Short tasks never pay for the collection.
LARGE_STEP_BYTES = 64 * 1024 * 1024


def _in_use() -> int:
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _trim_freed_memory() -> None:
    from api.runner import task_threads_here

    resting = peak = _in_use()
    while True:
        time.sleep(TRIM_CHECK_SECONDS)
        peak = max(peak, _in_use())
        _, running = task_threads_here()
        if running == 0 and peak - resting > LARGE_STEP_BYTES:
            gc.collect()
            _libc.malloc_trim(0)
            resting = peak = _in_use()
        elif _libc.mallinfo2().fordblks > TRIM_FREE_BYTES:
            _libc.malloc_trim(0)
        if running == 0:
            resting = min(resting, _in_use())


# The step modules (and with them pandas, numpy and pyarrow) are imported once here, before the
# fork, so every worker shares these pages instead of importing its own copy (~50 MB each).
from etl import registry  # noqa: E402

registry.load_steps()
import api.main  # noqa: E402,F401  (the app and its libraries: FastAPI, pydantic, starlette)
import uvicorn.lifespan.on  # noqa: E402,F401  (and what a Uvicorn worker imports when it starts)
import uvicorn.protocols.websockets.auto  # noqa: E402,F401
import h11  # noqa: E402,F401

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


def pre_fork(server, worker):
    # Objects that exist now are never collected in a worker, so the collector never writes to
    # (and un-shares) the pages the workers inherited.
    gc.freeze()


def post_fork(server, worker):
    if _libc is not None:
        threading.Thread(target=_trim_freed_memory, name="malloc-trim", daemon=True).start()
