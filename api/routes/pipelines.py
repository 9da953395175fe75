"""Pipelines (define, validate, run), retries of ended tasks, and dead letters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Admin, Operator, ServicesDep, Viewer, client_of
from api.errors import NotFound
from api.json_body import StrictJsonRoute
from api.orchestration import definitions, retries
from api.orchestration.pipelines import InvalidPipeline
from api.task import mask_secrets, now_iso

router = APIRouter(route_class=StrictJsonRoute)


class PipelineRun(BaseModel):
    """A pipeline run's request body; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict, description="Run parameters (e.g. date, funds).")
    only: list[str] | None = Field(None, description="Run only these nodes or tags (e.g. the systems to include).")


def _links(request: Request, task_id: str) -> dict[str, str]:
    root = request.scope.get("root_path", "")
    return {"status_url": f"{root}/status/{task_id}", "output_url": f"{root}/output/{task_id}"}


@router.get("/pipelines", summary="The pipeline definitions")
def list_pipelines(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """Every definition in ETL_PIPELINES_DIR, whether it can run, and its problems."""
    rows = services.pipelines.catalogue()
    return {"pipelines": rows, "count": len(rows), "folder": str(services.pipelines.folder)}


@router.get("/pipelines/{name}", summary="One pipeline definition")
def get_pipeline(name: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """The definition with its problems (empty when it can run)."""
    spec = services.pipelines.load(name)
    return {"definition": spec.model_dump(mode="json"), "problems": services.pipelines.check(spec)}


@router.post("/pipelines/{name}/validate", summary="Validate a pipeline definition")
def validate_pipeline(name: str, services: ServicesDep, _: Viewer,
                      definition: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    """Check the stored definition, or the one in the body (before saving it): 200 if it can run, 422 naming
    each node and field otherwise."""
    if definition:
        try:
            spec = definitions.parse(definition)
        except definitions.DefinitionError as exc:
            raise InvalidPipeline(f"Pipeline {name} is not valid: {exc}.", errors=exc.errors) from None
    else:
        spec = services.pipelines.load(name)
    problems = services.pipelines.check(spec)
    if problems:
        raise InvalidPipeline(f"Pipeline {spec.name} is not valid: {definitions.describe(problems)}.", errors=problems)
    return {"name": spec.name, "version": spec.version, "valid": True, "nodes": definitions.order(spec)}


@router.post("/pipelines/{name}/run", status_code=202, summary="Run a pipeline")
@router.post("/run-pipeline/{name}", status_code=202, summary="Run a pipeline (alias)", include_in_schema=False)
def run_pipeline(name: str, request: Request, services: ServicesDep, identity: Operator,
                 body: Annotated[PipelineRun | None, Body()] = None) -> JSONResponse:
    """Start a run: one pipeline task (202) whose nodes run as child tasks."""
    body = body or PipelineRun()
    client = client_of(request)
    task = services.pipelines.run(name, body.parameters, body.only, identity.as_dict(client))
    services.audit.record("run_pipeline", identity, client, task_id=task.task_id, pipeline=name,
                          parameters=mask_secrets(body.parameters), only=body.only)
    links = _links(request, task.task_id)
    content = {"task_id": task.task_id, "status": task.status.value, "pipeline": name,
               "nodes": {n: {"state": v["state"], "task_id": v["task_id"]} for n, v in task.pipeline["nodes"].items()},
               **links}
    return JSONResponse(content, status_code=202, headers={"Location": links["status_url"]})


@router.post("/retry/{task_id}", status_code=202, summary="Retry an ended task or pipeline")
def retry_task(task_id: str, request: Request, services: ServicesDep, identity: Operator) -> JSONResponse:
    """A failed or stopped task runs again as a new attempt; a pipeline re-runs only its failed, stopped
    and skipped nodes. Returns the new task (a repeat of the request returns the same one)."""
    old = services.store.get(task_id)
    client = client_of(request)
    by = identity.as_dict(client)
    if old.pipeline is not None:
        if old.retried_as:
            task = services.store.get(old.retried_as["task_id"])
        else:
            task = services.pipelines.retry(old, by)
    else:
        task = retries.rerun(services.store, services.runner, old, by)
    if not old.retried_as:
        services.store.resolve_dead_letter(task_id, "retried", {"task_id": task.task_id, "by": by, "at": now_iso()})
    services.audit.record("retry", identity, client, task_id=task_id, new_task_id=task.task_id)
    links = _links(request, task.task_id)
    content = {"task_id": task.task_id, "retry_of": task_id, "status": task.status.value,
               "attempt": task.attempt, **links}
    return JSONResponse(content, status_code=202, headers={"Location": links["status_url"]})


def _dead_view(task) -> dict[str, Any]:
    return {**task.summary_view(), "error": task.error and {k: v for k, v in task.error.items() if k != "traceback"},
            "attempts": task.attempts, "listed_at": (task.dead_letter or {}).get("listed_at"),
            "pipeline": task.pipeline["name"] if task.pipeline else None,
            "retry_url": f"/retry/{task.task_id}"}


@router.get("/dead-letters", summary="Tasks that failed after their last attempt")
def dead_letters(services: ServicesDep, _: Viewer, limit: int = 100) -> dict[str, Any]:
    """Failed tasks and pipelines nobody retried or dismissed yet, newest first, with error and attempts."""
    tasks = services.store.dead_letters(limit=max(1, min(limit, 500)))
    return {"dead_letters": [_dead_view(t) for t in tasks], "count": len(tasks)}


@router.post("/dead-letters/{task_id}/dismiss", summary="Dismiss a dead letter")
def dismiss_dead_letter(task_id: str, request: Request, services: ServicesDep, identity: Admin) -> dict[str, Any]:
    """Take a failed task off the dead letters without retrying it (audited)."""
    task = services.store.get(task_id)
    if not services.store.is_dead_letter(task.task_id):
        raise NotFound(f"Task {task_id} is not a dead letter.")
    client = client_of(request)
    record = {"by": identity.as_dict(client), "at": now_iso()}
    services.store.resolve_dead_letter(task_id, "dismissed", record)
    services.audit.record("dismiss", identity, client, task_id=task_id)
    return {"task_id": task_id, "dismissed": record}
