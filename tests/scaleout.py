"""Real scale-out parts for tests: a private redis-server and Celery worker hosts (separate process groups)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.server import ROOT, Server, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """redis-server on 127.0.0.1, a free port and a private folder; AOF everysec if asked."""

    def __init__(self, folder: Path, aof: bool = False) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()  # kept across restarts: clients reconnect to the same address
        self.aof = aof
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                   "--save", "", "--protected-mode", "yes", "--daemonize", "no"]
        if self.aof:
            command += ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            self.proc.wait(10)
            self.log.close()
            self.proc = None


class WorkerHost:
    """``python -m api worker`` in its own process group with its own storage folder (no shared files)."""

    def __init__(self, folder: Path, redis_url: str, concurrency: int, name: str, **settings: Any) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.concurrency = concurrency
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
        self.env.update({"ETL_BACKEND": "celery", "ETL_REDIS_URL": redis_url, "ETL_STORAGE_DIR": str(folder),
                         "ETL_DIAGNOSTIC_STEPS": "1", "ETL_STOP_GRACE_SECONDS": "2"})
        self.env.update({f"ETL_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen | None = None
        self.terminating = False  # SIGTERM sent, exit not yet waited for

    def start(self) -> WorkerHost:
        self.log = open(self.folder / "worker.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "api", "worker", "--concurrency", str(self.concurrency),
                                      "--name", self.name], cwd=ROOT, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def pool_pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [p.pid for p in psutil.Process(self.proc.pid).children()]

    def kill_tree(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM (Celery's warm shutdown) without waiting: ``stop`` then waits for it."""
        if self.proc is not None and self.proc.poll() is None and not self.terminating:
            self.proc.send_signal(signal.SIGTERM)
            self.terminating = True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self.log.close()
        self.proc = None
        self.terminating = False

    def log_text(self) -> str:
        return (self.folder / "worker.log").read_text(errors="replace")


SERVER_ONLY = {"kind", "workers", "probe_headers", "port", "root", "storage_dir", "anonymous_role", "worker_class"}


def scale_out_parts(storage: Path, concurrency: int = 4, **settings: Any) -> tuple[RedisServer, WorkerHost]:
    """The redis-server and the worker host (not started) of a CeleryServer on ``storage`` with ``settings``."""
    redis_server = RedisServer(storage.parent / "redis", aof=True)
    host_settings = {k: v for k, v in settings.items() if v is not None and k not in SERVER_ONLY}
    host = WorkerHost(storage.parent / "worker-host", redis_server.url, concurrency, "host1", **host_settings)
    return redis_server, host


class CeleryServer(Server):
    """A Server in scale-out mode with its own redis-server (AOF, so a restart of the whole service
    keeps its state) and worker host, all started with it and stopped with it.

    ``settings`` go to the API and to the worker host alike (the steps read theirs there).
    ``stop_api`` stops the API hosts only (their crash or restart, while Redis and the worker host go on).
    """

    def __init__(self, storage: Path, concurrency: int = 4, *, parts: tuple[RedisServer, WorkerHost] | None = None,
                 **settings: Any) -> None:
        # ``parts``: this server's Redis and worker host, made (and maybe started) ahead by scale_out_parts
        self.redis, self.host = parts or scale_out_parts(storage, concurrency, **settings)
        super().__init__(storage, backend="celery", redis_url=self.redis.url, **settings)

    def start(self, timeout: float = 60) -> CeleryServer:
        if self.redis.proc is None:
            self.redis.start()
        if self.host.proc is None:
            self.host.start()
        super().start(timeout)
        return self

    def worker_hosts_ready(self, timeout: float = 60) -> CeleryServer:
        """Wait until the worker host's pool processes heartbeat (a task submitted before waits for them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.client.get("/stats", headers=self.probe_headers).json()
            if sum(1 for w in stats["workers"] if w["alive"] and w.get("role") == "worker") >= self.host.concurrency:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the worker host did not start in {timeout} s:\n{self.host.log_text()[-3000:]}")

    def stop_api(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        return super().stop(sig, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        """The API hosts, then the worker host, then Redis (a stop in the middle of a test: in this order)."""
        try:
            return super().stop(sig, timeout)
        finally:
            self.host.stop()
            self.redis.stop()

    def close(self) -> None:
        """At a fixture's end: the API hosts and the worker host shut down at the same time (their
        graceful shutdowns take a second or more each, both need Redis), then Redis."""
        try:
            self.host.terminate()
            super().stop()
        finally:
            self.host.stop()
            self.redis.stop()


def make_backend_server(backend: str, storage: Path, **settings: Any) -> Server:
    """A server (not started) in local mode or in scale-out mode."""
    return Server(storage, **settings) if backend == "local" else CeleryServer(storage, **settings)


def backend_of(server: Server) -> str:
    return server.env.get("ETL_BACKEND", "local")


BACKENDS = ["local", pytest.param("celery", marks=pytest.mark.skipif(
    sys.platform != "linux", reason="worker hosts run on Linux only"))]


def start_server(backend: str, storage: Path, **settings: Any) -> Server:
    """A started server in either mode (its worker host ready too), stopped again if it fails to start."""
    return _started(make_backend_server(backend, storage, **settings))


def _started(srv: Server) -> Server:
    try:
        srv.start()
        if isinstance(srv, CeleryServer):
            srv.worker_hosts_ready()
    except BaseException:
        srv.close()
        raise
    return srv


# Scale-out parts started while the same module runs in local mode: (module, fixture) -> (storage, parts)
_warm: dict[tuple[str, str], tuple[Path, tuple[RedisServer, WorkerHost]]] = {}


def backend_server(**settings: Any) -> Any:
    """A module-scoped server fixture run once per backend: the module's tests hold in both modes.

    While the module's tests run in local mode, the Redis and worker host of its scale-out run are
    started already (a worker host takes seconds to start, the local tests leave a core idle), so
    the scale-out run only waits for its API hosts. Nothing is shared between the two runs.
    """

    def fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
        key = (request.module.__name__, request.fixturename)
        warm = _warm.pop(key, None) if request.param == "celery" else None
        if warm is not None:
            storage, parts = warm
            srv = _started(CeleryServer(storage, parts=parts, **settings))
        else:
            storage = tmp_path_factory.mktemp(f"server-{request.param}") / "task_storage"
            srv = start_server(request.param, storage, **settings)
        try:
            if request.param == "local" and _scale_out_run_follows(request):
                _warm_up(request, key, tmp_path_factory, settings)
            yield srv
        finally:
            srv.close()

    fixture.starts_server = True  # conftest marks the tests that use it `server`
    return pytest.fixture(scope="module", params=BACKENDS)(fixture)


def _scale_out_run_follows(request: pytest.FixtureRequest) -> bool:
    """Some selected test of this module uses this fixture in scale-out mode."""
    if sys.platform != "linux":
        return False
    return any(item.module is request.module and getattr(item, "callspec", None) is not None
               and item.callspec.params.get(request.fixturename) == "celery" for item in request.session.items)


def _warm_up(request: pytest.FixtureRequest, key: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
             settings: dict[str, Any]) -> None:
    storage = tmp_path_factory.mktemp("server-celery") / "task_storage"
    redis_server, host = parts = scale_out_parts(storage, **settings)
    try:
        redis_server.start()
        host.start()
    except BaseException:
        host.stop()
        redis_server.stop()
        raise
    _warm[key] = (storage, parts)

    def unused() -> None:  # the scale-out run was not reached (a failure with -x, an interrupt)
        if _warm.pop(key, None) is not None:
            host.stop()
            redis_server.stop()

    request.node.addfinalizer(unused)
