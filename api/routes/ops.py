"""Liveness, health, statistics, metrics and cleanup."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api import monitor
from api.deps import Admin, ServicesDep, Viewer, client_of
from api.errors import Conflict
from api.json_body import StrictJsonRoute
from api.scheduler import Schedule
from api.schemas import GUARDED, HealthBody, answer, errors

# Longer than this, a daily schedule is what is meant; the bound keeps next-run times representable.
MAX_INTERVAL_SECONDS = 366 * 24 * 3600.0
# The longest IANA zone name is 32 characters; a longer one is refused before it reaches the file system.
MAX_TIMEZONE_CHARS = 64


class ScheduleChange(Schedule):
    """The body of POST /cleanup/schedule: a Schedule within bounds a client can mean."""

    interval_seconds: float | None = Field(None, gt=0, le=MAX_INTERVAL_SECONDS, description="Run every N seconds.")
    timezone: str | None = Field(None, max_length=MAX_TIMEZONE_CHARS,
                                 description="Daily run: IANA time zone, e.g. America/Sao_Paulo.")

# Every JSON body is parsed strictly (NaN, Infinity and lone surrogates are 422s): api/json_body.py.
router = APIRouter(route_class=StrictJsonRoute)


@router.get("/livez", summary="Liveness")
async def livez() -> Response:
    """Answers at once, touching nothing."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/health", summary="Health checks",
            responses={**answer(200, HealthBody, "Every check passes."),
                       **answer(503, HealthBody, "A check fails: `failing` names it.")})
def health(services: ServicesDep) -> JSONResponse:
    """200 when every check passes, 503 naming the failing checks otherwise."""
    ok, body = monitor.health(services)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/stats", summary="Statistics", response_model=dict[str, Any], responses=errors(*GUARDED, 503))
def stats(services: ServicesDep, _: Viewer) -> JSONResponse:
    """Counts, capacity, success rate, durations, storage, workers, last cleanup."""
    # Already plain JSON values: no response-model pass over the whole document (it cost as much as
    # building it; dashboards and benchmarks poll this route).
    return JSONResponse(monitor.stats(services))


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
            responses=errors(*GUARDED, 503, json_route=False))
def metrics(services: ServicesDep, _: Viewer) -> PlainTextResponse:
    """Prometheus text exposition format."""
    return PlainTextResponse(monitor.metrics(services), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/cleanup/now", summary="Run cleanup now", responses=errors(*GUARDED, 403, 409, 503))
def cleanup_now(request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Remove every ended task past its expiry now; returns what was removed."""
    outcome = services.scheduler.run_now()
    services.audit.record("cleanup", identity, client_of(request), removed=outcome["removed"])
    return outcome


@router.get("/cleanup/schedule", summary="The cleanup schedule", responses=errors(*GUARDED, 503))
def get_schedule(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """TTL, interval or daily time, last run, next run, last removed count."""
    return services.scheduler.describe()


@router.post("/cleanup/schedule", summary="Change the cleanup schedule",
             responses=errors(*GUARDED, 403, 413, 422, 503))
def set_schedule(schedule: ScheduleChange, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Either {"interval_seconds": N} or the v1 daily form {"hour", "minute", "timezone"}."""
    services.audit.record("schedule", identity, client_of(request), schedule=schedule.model_dump(exclude_none=True))
    return services.scheduler.set_schedule(schedule)


class CapacityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent_tasks: int = Field(ge=1, le=100_000, description="The new global running cap.")


@router.post("/capacity", summary="Change the global running cap (scale-out mode)",
             responses=errors(*GUARDED, 403, 409, 422, 503))
def set_capacity(change: CapacityChange, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Set the cap shared by every API and worker host; it holds from the next admission."""
    setter = getattr(services.store, "set_max_running", None)
    if setter is None:
        raise Conflict("The cap changes at run time only in scale-out mode (ETL_BACKEND=celery); "
                       "here set ETL_MAX_CONCURRENT_TASKS and restart.")
    setter(change.max_concurrent_tasks)
    services.audit.record("capacity", identity, client_of(request), max_concurrent_tasks=change.max_concurrent_tasks)
    return {"max_concurrent_tasks": change.max_concurrent_tasks}
