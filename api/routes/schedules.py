"""Schedules: create, read, replace, delete, pause and resume; what each fired."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from api.deps import Admin, ServicesDep, Viewer, client_of
from api.errors import BadRequest
from api.json_body import StrictJsonRoute
from api.orchestration.schedules import ScheduleSpec

router = APIRouter(route_class=StrictJsonRoute)


@router.get("/schedules", summary="Every schedule with its next runs")
def list_schedules(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """Schedules with their next run times (none while paused) and the last occurrence fired."""
    rows = [services.schedules.describe(r) for r in services.store.list_schedules()]
    return {"schedules": rows, "count": len(rows)}


@router.post("/schedules", status_code=201, summary="Create a schedule")
def create_schedule(spec: ScheduleSpec, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """A cron schedule for a step or a pipeline (409 if the id is taken; 422 naming the field if it cannot run)."""
    client = client_of(request)
    view = services.schedules.create(spec, identity.as_dict(client))
    services.audit.record("schedule_create", identity, client, schedule=spec.id, cron=spec.cron)
    return view


@router.get("/schedules/{schedule_id}", summary="One schedule")
def get_schedule(schedule_id: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    return services.schedules.describe(services.schedules.get(schedule_id))


@router.put("/schedules/{schedule_id}", summary="Replace a schedule")
def replace_schedule(schedule_id: str, spec: ScheduleSpec, request: Request, services: ServicesDep,
                     identity: Admin) -> dict[str, Any]:
    """Replace the schedule (the body's id must be the path's)."""
    if spec.id != schedule_id:
        raise BadRequest(f"The body's id {spec.id!r} is not the path's {schedule_id!r}.")
    client = client_of(request)
    view = services.schedules.create(spec, identity.as_dict(client), replace=True)
    services.audit.record("schedule_replace", identity, client, schedule=spec.id, cron=spec.cron)
    return view


@router.delete("/schedules/{schedule_id}", status_code=204, summary="Delete a schedule")
def delete_schedule(schedule_id: str, request: Request, services: ServicesDep, identity: Admin) -> Response:
    services.schedules.delete(schedule_id)
    services.audit.record("schedule_delete", identity, client_of(request), schedule=schedule_id)
    return Response(status_code=204)


@router.post("/schedules/{schedule_id}/pause", summary="Pause a schedule")
def pause_schedule(schedule_id: str, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    client = client_of(request)
    services.audit.record("schedule_pause", identity, client, schedule=schedule_id)
    return services.schedules.set_paused(schedule_id, True, identity.as_dict(client))


@router.post("/schedules/{schedule_id}/resume", summary="Resume a schedule")
def resume_schedule(schedule_id: str, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Resume from the next occurrence (what was missed while paused is not run)."""
    client = client_of(request)
    services.audit.record("schedule_resume", identity, client, schedule=schedule_id)
    return services.schedules.set_paused(schedule_id, False, identity.as_dict(client))


@router.get("/schedules/{schedule_id}/runs", summary="What a schedule fired")
def schedule_runs(schedule_id: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """Fired occurrences, newest first: occurrence time and task id."""
    runs = services.schedules.runs(schedule_id)
    return {"schedule_id": schedule_id, "runs": runs, "count": len(runs)}
