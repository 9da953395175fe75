"""The ASGI app (``api.main:app``): routes, error handlers, and per-worker start and stop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.admission_group import AdmissionGroup
from api.audit import AuditLog
from api.auth import KeyRing
from api.deps import Services
from api.errors import install_error_handlers
from api.events import EventHub
from api.middleware import BodyLimitAndHeaders, HostAndOriginGuard
from api.orchestration.loop import Orchestrator
from api.orchestration.pipelines import Pipelines
from api.orchestration.schedules import Schedules
from api.routes import events, keys as key_routes, ops, tasks, ui
from api.routes import pipelines as pipeline_routes, schedules as schedule_routes
from api.runner import Runner
from api.scheduler import CleanupScheduler
from api.schemas import install_openapi
from api.sessions import Sessions
from api.settings import Settings, SettingsError, get_settings, settings_or_exit
from api.store import make_store
from etl import registry

logger = logging.getLogger(__name__)

# Left of the graceful timeout for draining connections and recording what was interrupted.
SHUTDOWN_MARGIN_SECONDS = 8.0


def build_services(settings: Settings) -> Services:
    """Open the store and start this worker's runner and scheduler (after fork, never at import)."""
    store = make_store(settings)
    store.open()
    registry.load_steps()
    if settings.backend == "celery":
        from api.celery_runner import CeleryRunner

        runner: Runner = CeleryRunner(store, settings)
    else:
        runner = Runner(store, settings)
    runner.policies.check()
    store.ensure_index(runner.worker.id)
    runner.start()
    scheduler = CleanupScheduler(store, runner.worker.id, settings.cleanup_interval_seconds,
                                 int(settings.task_logs_max_mb * 1024 * 1024))
    scheduler.start()
    audit = AuditLog(settings.storage_dir / "audit.log", settings.audit_log_max_bytes, settings.audit_log_backups)
    pipelines = Pipelines(store, runner, settings)
    pipelines.check_startup()
    runner.on_task_end = pipelines.on_task_end
    schedules = Schedules(store, runner, pipelines, settings)
    orchestrator = Orchestrator(store, runner, pipelines, schedules)
    orchestrator.start()
    admission = AdmissionGroup(runner) if hasattr(store, "submit_group") else None
    return Services(settings, store, runner, scheduler, KeyRing.from_settings(settings), audit,
                    pipelines=pipelines, schedules=schedules, orchestrator=orchestrator, admission=admission)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` defaults to the environment's, read when a worker starts."""

    def active_settings() -> Settings:
        return settings or settings_or_exit()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        current = active_settings()
        services = build_services(current)
        app.state.services = services
        app.state.events = EventHub(services.store)
        app.state.sessions = Sessions(services.store.session_secret(), services.keys,
                                      current.session_hours * 3600)
        try:
            yield
        finally:
            wait = max(1.0, current.graceful_timeout_seconds - SHUTDOWN_MARGIN_SECONDS)
            app.state.events.close()
            services.scheduler.stop()
            if services.orchestrator is not None:
                services.orchestrator.stop()
            await anyio.to_thread.run_sync(services.runner.shutdown, wait)
            services.store.close()

    app = FastAPI(
        title="ETL Task API",
        version="2.0.0",
        summary="Run ETL steps as tasks: start, poll, read the output, stop.",
        lifespan=lifespan,
        # Served by api/routes/ui.py from pinned local assets: the default pages load them from a CDN.
        docs_url=None,
        redoc_url=None,
        # The service reports through /metrics and its logs; FastAPI's OpenTelemetry hooks looked up
        # three global providers on every request (~12 µs, a fifth of a /livez answer).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(tasks.router)
    app.include_router(ops.router)
    app.include_router(events.router)
    ui.install(app)
    app.include_router(pipeline_routes.router)
    app.include_router(schedule_routes.router)
    app.include_router(key_routes.router)
    app.add_middleware(HostAndOriginGuard, settings=active_settings)
    app.add_middleware(BodyLimitAndHeaders, max_bytes=lambda: active_settings().max_body_bytes)
    origins = (settings or _environment_settings()).cors_origin_list
    if origins:
        # Closed unless ETL_CORS_ORIGINS lists the browser origins allowed to call the API.
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"])
    return app


def _environment_settings() -> Settings:
    try:
        return get_settings()
    except SettingsError:
        # Reported properly (one line, exit 2) when a worker starts; the app object still imports.
        return Settings.model_construct(cors_origins="")


app = create_app()
