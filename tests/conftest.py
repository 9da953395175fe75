"""Shared fixtures: a real store in a temporary folder, and real servers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.runner import Runner
from api.settings import Settings
from api.store import TaskStore, make_store
from etl import registry
from tests.scaleout import BACKENDS, start_server
from tests.server import Server
from tests.steps import SAMPLES


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    store = TaskStore(tmp_path / "storage", tmp_path / "storage" / "runs", tmp_path / "storage" / "outputs",
                      ttl_seconds=3600, max_running=2, max_queued=3, worker_lost_after_seconds=3)
    store.open()
    yield store
    store.close()


def runner_settings(tmp_path: Path, **changes) -> Settings:
    """Settings for a Runner in this process, on a private store (no environment read)."""
    defaults = Settings.model_construct().__dict__
    storage = tmp_path / "st"
    return Settings.model_construct(**{
        **defaults, "storage_dir": storage, "work_dir": storage / "runs", "output_dir": storage / "outputs",
        "input_dir": tmp_path, "diagnostic_steps": True, "task_timeout_seconds": 600.0, "stop_grace_seconds": 1.0,
        "heartbeat_interval_seconds": 0.2, "max_concurrent_tasks": 2, "max_queued_tasks": 10, **changes})


@pytest.fixture
def make_runner(tmp_path: Path) -> Iterator:
    """A real Runner (task threads and control loop) on a real store in this process; shut down after."""
    started: list[tuple[Runner, TaskStore]] = []

    def make(**changes) -> Runner:
        registry.load_steps()
        runner = Runner(make_store(runner_settings(tmp_path, **changes)), runner_settings(tmp_path, **changes))
        runner.store.open()
        runner.start()
        started.append((runner, runner.store))
        return runner

    yield make
    for runner, store in started:
        runner.shutdown(2)
        store.close()


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Steps read ETL_INPUT_DIR (a private copy of the samples) and write private output/work folders."""
    shutil.copytree(SAMPLES, tmp_path / "inputs", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("ETL_INPUT_DIR", str(tmp_path / "inputs"))
    monkeypatch.setenv("ETL_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("ETL_WORK_DIR", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One 4-worker Gunicorn for a whole test module (tests must not depend on each other's tasks)."""
    srv = Server(tmp_path_factory.mktemp("server") / "task_storage").start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start servers with chosen settings (``backend="celery"``: scale-out mode); every one is closed after the test."""
    started: list[Server] = []

    def make(storage: Path | None = None, backend: str = "local", **settings) -> Server:
        srv = start_server(backend, storage or tmp_path / "task_storage", **settings)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.close()


# Markers, so a change can be checked without everything: `tests/run.sh -m "not server"` runs the
# in-process tests only (the store, steps, expressions) in seconds.
MARKERS = {
    "server": "starts real Gunicorn/Uvicorn servers (seconds per test)",
    "browser": "drives real headless Chromium (Debian chromium, chromium-driver)",
    "odbc": "loads through the real SQLite ODBC driver (Debian unixodbc, libsqliteodbc)",
}
BROWSER_MODULES = {"test_portals"}
ODBC_MODULES = {"test_backoffice"}


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"server", "make_server", "make_any_server", "srv"} or _uses_backend_server(item) or \
                any(call in _source(item) for call in ("Server(", "start_server(")):
            item.add_marker(pytest.mark.server)
        if module in BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)
        if module in ODBC_MODULES:
            item.add_marker(pytest.mark.odbc)


def _uses_backend_server(item: pytest.Item) -> bool:
    """A module-scoped server of tests/scaleout.backend_server (whatever the module names it)."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(getattr(defs[-1].func, "starts_server", False)
                                    for defs in info.name2fixturedefs.values() if defs)


def _source(item: pytest.Item) -> str:
    import inspect

    try:
        return inspect.getsource(item.function)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return ""


@pytest.fixture(params=BACKENDS)
def make_any_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Like make_server, once per backend: local (diskcache + threads) and celery (Redis + a worker host)."""
    started: list[Server] = []

    def make(storage: Path | None = None, **settings) -> Server:
        srv = start_server(request.param, storage or tmp_path / "task_storage", **settings)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.close()
