"""Liveness, health, statistics, metrics and cleanup."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api import monitor
from api.deps import Admin, ServicesDep, Viewer, client_of
from api.scheduler import Schedule

router = APIRouter()


@router.get("/livez", summary="Liveness")
async def livez() -> Response:
    """Answers at once, touching nothing."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/health", summary="Health checks")
def health(services: ServicesDep) -> JSONResponse:
    """200 when every check passes, 503 naming the failing checks otherwise."""
    ok, body = monitor.health(services)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/stats", summary="Statistics")
def stats(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """Counts, capacity, success rate, durations, storage, workers, last cleanup."""
    return monitor.stats(services)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
def metrics(services: ServicesDep, _: Viewer) -> PlainTextResponse:
    """Prometheus text exposition format."""
    return PlainTextResponse(monitor.metrics(services), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/cleanup/now", summary="Run cleanup now")
def cleanup_now(request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Remove every ended task past its expiry now; returns what was removed."""
    outcome = services.scheduler.run_now()
    services.audit.record("cleanup", identity, client_of(request), removed=outcome["removed"])
    return outcome


@router.get("/cleanup/schedule", summary="The cleanup schedule")
def get_schedule(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """TTL, interval or daily time, last run, next run, last removed count."""
    return services.scheduler.describe()


@router.post("/cleanup/schedule", summary="Change the cleanup schedule")
def set_schedule(schedule: Schedule, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Either {"interval_seconds": N} or the v1 daily form {"hour", "minute", "timezone"}."""
    services.audit.record("schedule", identity, client_of(request), schedule=schedule.model_dump(exclude_none=True))
    return services.scheduler.set_schedule(schedule)
