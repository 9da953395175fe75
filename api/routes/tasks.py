"""Running, watching and stopping tasks; the step catalogue."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from api.deps import SECURITY_OPENAPI, Operator, Services, ServicesDep, Viewer, authorize, client_of
from api.errors import BadRequest, InvalidParameters, NotFound, WrongState, describe_field_errors, field_errors
from api.json_body import StrictJsonRoute, is_json
from api.json_body import parse as parse_json
from api.schemas import GUARDED, StopAnswer, TaskAccepted, TaskList, answer, errors
from api.store import StoreBusy
from api.store.cachedb import encode
from api.task import TaskStatus, is_task_id, mask_secrets
from etl import registry, secrets
from etl.errors import UnknownStep

# Every JSON body is parsed strictly (NaN, Infinity and lone surrogates are 422s): api/json_body.py.
router = APIRouter(route_class=StrictJsonRoute)

MAX_WAIT_SECONDS = 60
MAX_LOG_LINES = 5000
MAX_IDEMPOTENCY_KEY = 200
STATUS_PATH = "/status/{task_id}"
OUTPUT_PATH = "/output/{task_id}"


class RunRequest(BaseModel):
    """The v1 request body; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict, description="The step's parameters (see GET /steps).")
    previous_outputs: dict[str, Any] = Field(default_factory=dict, description="Outputs of earlier steps of a chain.")
    custom_params: dict[str, Any] = Field(default_factory=dict, description="Free-form values passed to the step.")


def _step(services: ServicesDep, name: str) -> registry.Step:
    try:
        return registry.get_step(name, include_diagnostic=services.settings.diagnostic_steps)
    except UnknownStep as exc:
        raise NotFound(str(exc)) from None


def _task_links(request: Request, task_id: str) -> dict[str, str]:
    # Formatted from the route paths (request.url_for searches every route, on each submit).
    root = request.scope.get("root_path", "")
    return {
        "status_url": root + STATUS_PATH.format(task_id=task_id),
        "output_url": root + OUTPUT_PATH.format(task_id=task_id),
    }


def _misplaced_references(step: registry.Step, body: RunRequest) -> list[dict[str, Any]]:
    """Field errors for ${secret:...} references outside the fields declared to carry secrets."""
    found = [("parameters", *path) for path in
             secrets.misplaced_references(body.parameters, secrets.secret_paths(step.params_model))]
    found += [("custom_params", *path) for path in secrets.misplaced_references(body.custom_params, [])]
    found += [("previous_outputs", *path) for path in secrets.misplaced_references(body.previous_outputs, [])]
    message = "a ${secret:...} reference is allowed only in fields declared to carry secrets (x-secret in GET /steps)"
    return [{"loc": list(path), "field": ".".join(path), "msg": message, "type": "secret_not_allowed"}
            for path in found]


async def run_step(
    step_name: str,
    request: Request,
    identity: Operator,
    body: Annotated[RunRequest | None, Body()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
) -> JSONResponse:
    """Start `step_name` as a task and answer at once with its id (202)."""
    services: Services = request.app.state.services  # read here: one dependency solve fewer per submit
    step = _step(services, step_name)
    body = body or RunRequest()
    problems = _misplaced_references(step, body)
    try:
        params = step.params_model.model_validate(body.parameters)
    except ValidationError as exc:
        problems += field_errors(exc.errors(), ("parameters",))
    if problems:
        raise InvalidParameters(
            f"Invalid parameters for step {step_name}: {describe_field_errors(problems)}.", errors=problems
        )
    idempotency = None
    if idempotency_key:
        request_json = json.dumps([step_name, body.model_dump()], sort_keys=True, default=str)
        scope = f"{identity.name}\n{idempotency_key}"
        idempotency = (hashlib.sha256(scope.encode()).hexdigest(), hashlib.sha256(request_json.encode()).hexdigest())
    client = client_of(request)
    rate = (identity.name, services.settings.rate_limit_per_minute) if services.settings.rate_limit_per_minute else None
    submit = functools.partial(services.runner.submit, step_name, params, body.model_dump(),
                               identity.as_dict(client), idempotency, rate)
    try:
        task, replayed = submit(wait=False)
    except StoreBusy:
        # Another process holds the write lock: wait for it off the event loop, together with the
        # other submits of this worker that wait for it (one transaction for all of them).
        if services.admission is not None:
            task, replayed = await services.admission.submit(step_name, params, body.model_dump(),
                                                             identity.as_dict(client), idempotency, rate)
        else:
            task, replayed = await anyio.to_thread.run_sync(functools.partial(submit, wait=True))
    services.audit.record("run", identity, client, task_id=task.task_id, step=step_name, replayed=replayed,
                          params=mask_secrets(task.params, task.secret_fields))
    links = _task_links(request, task.task_id)
    content = {"task_id": task.task_id, "status": task.status.value, "step_name": task.step_name,
               "created_at": task.created_at, **links}
    headers = {"Location": links["status_url"]}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(content, status_code=202, headers=headers)


_RUN_BODY = TypeAdapter(RunRequest | None)


async def _submit_arguments(request: Request) -> dict[str, Any] | None:
    """run_step's arguments for the common submit (no body or a valid JSON one, a valid header),
    or None for any other request, which the declared route answers with its own errors."""
    raw = await request.body()
    value = None
    if raw:
        if not is_json(request.headers.get("content-type")):
            return None
        value = parse_json(raw)  # 400/422 as the declared route answers them, before the key check
        request._json = value  # Starlette's Request.json() answers from it (the declared route reads it)
    identity = await authorize(request, "operator")  # 401/403 before any 422, as the declared route
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        return None
    try:
        body = _RUN_BODY.validate_python(value)
    except ValidationError:
        return None
    return {"step_name": request.path_params["step_name"], "request": request, "identity": identity,
            "body": body, "idempotency_key": key}


class SubmitRoute(StrictJsonRoute):
    """POST /run's route. The common submit is handed to run_step without FastAPI's parameter
    solving (a quarter of the event loop's time per submit); any other request takes the
    declared route, so every error answer, and the OpenAPI document, are the declared ones."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        declared = super().get_route_handler()

        async def submit(request: Request) -> Response:
            arguments = await _submit_arguments(request)
            if arguments is None:
                return await declared(request)
            return await run_step(**arguments)

        return submit


router.add_api_route(
    "/run/{step_name}", run_step, methods=["POST"], status_code=202, summary="Start a task",
    responses={**answer(202, TaskAccepted, "Accepted: poll status_url (also the Location header)."),
               **errors(*GUARDED, 403, 404, 413, 422, 429, 503)},
    route_class_override=SubmitRoute)

_WAIT = TypeAdapter(Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)])
_WAIT_DESCRIPTION = "Long-poll: wait up to N s for a change."
# The route reads its query and checks the key itself (five dependency solves cost more than the
# rest of the answer); the document shows the same parameter and security as a declared one would.
_STATUS_OPENAPI = {
    **SECURITY_OPENAPI,
    "parameters": [{"name": "wait", "in": "query", "required": False, "description": _WAIT_DESCRIPTION,
                    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS, "default": 0,
                               "title": "Wait", "description": _WAIT_DESCRIPTION}}],
}


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        return _WAIT.validate_python(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", "wait", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None


class PathTextRoute(StrictJsonRoute):
    """A route whose endpoint takes the request and text path parameters only, called without
    FastAPI's parameter solving: a text path parameter cannot fail validation, and solving it
    was about half of GET /status's time in the app. The OpenAPI document is the declared one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        params = self.dependant.path_params
        if self.dependant.dependencies or self.dependant.query_params or self.dependant.body_params \
                or any(p.field_info.annotation is not str for p in params):
            raise TypeError(f"{self.path}: only text path parameters and the request may be declared")

        async def call(request: Request) -> Response:
            return await endpoint(request=request, **request.path_params)

        return call


async def task_status(task_id: str, request: Request) -> Response:
    """The task's state; with `wait`, answers as soon as its state or progress changes."""
    await authorize(request, "viewer")
    wait = _wait_seconds(request)
    store = request.app.state.services.store
    if wait:
        task = await store.wait_change(task_id, wait)
    else:
        # An ended task's answer comes encoded from the store (the local one keeps it per task).
        task = getattr(store, "status_answer", store.get)(task_id)
        if type(task) is bytes:
            return Response(task, media_type="application/json")
    view = task.status_view()
    if task.status is TaskStatus.QUEUED:
        view["waiting"] = store.why_waiting(task)  # why it waits, for what, and until about when
    # Encoded here, not by FastAPI's response validation and encoding: this is the hottest endpoint.
    return Response(encode(view), media_type="application/json")


router.add_api_route(STATUS_PATH, task_status, methods=["GET"], name="task_status", summary="A task's state",
                     responses=errors(*GUARDED, 404, 422, 503), openapi_extra=_STATUS_OPENAPI,
                     route_class_override=PathTextRoute)


@router.get(OUTPUT_PATH, name="task_output", summary="A task's result or error",
            responses=errors(*GUARDED, 404, 409, 503))
async def task_output(task_id: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """The result of a completed task, or the error (with traceback) of a failed one."""
    task = services.store.get(task_id)
    if not task.status.terminal:
        raise WrongState(
            f"Task {task_id} is {task.status.value}; its output exists once it ends. Poll GET /status/{task_id}.",
            status=task.status.value,
        )
    answer: dict[str, Any] = {"task_id": task.task_id, "step_name": task.step_name, "status": task.status.value,
                              "completed_at": task.completed_at, "artifacts": task.artifacts}
    if task.status is TaskStatus.COMPLETED:
        answer["result"] = task.result
    else:
        answer["result"] = None
        answer["error"] = task.error
        answer["message"] = task.message
    return answer


@router.get("/logs/{task_id}", summary="A task's log lines", responses=errors(*GUARDED, 404, 422, 503))
def task_logs(
    task_id: str,
    services: ServicesDep,
    _: Viewer,
    since: Annotated[int, Query(ge=0, description="Skip this many lines (the `next` of the previous call).")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_LINES)] = 1000,
) -> dict[str, Any]:
    """The task's log, from line `since` on."""
    task = services.store.get(task_id)
    lines = services.store.read_log(task_id, since, limit, include_partial=task.status.terminal)
    next_line = since + len(lines)
    return {"task_id": task_id, "status": task.status.value, "since": since, "next": next_line,
            "lines": lines, "complete": task.status.terminal and len(lines) < limit}


@router.post("/stop/{task_id}", summary="Stop a task",
             responses={**answer(200, StopAnswer, "The task is stopped (it was already, or it was queued)."),
                        **answer(202, StopAnswer, "Stop requested; the task stops within seconds."),
                        **errors(*GUARDED, 403, 404, 409, 503)})
def stop_task(task_id: str, request: Request, services: ServicesDep, identity: Operator) -> JSONResponse:
    """Ask a task to stop: 202 while it takes effect, 200 once stopped, 409 if it already ended otherwise."""
    task = services.store.request_stop(task_id, identity.as_dict(client_of(request)))
    services.audit.record("stop", identity, client_of(request), task_id=task_id, status=task.status.value)
    if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
        raise WrongState(f"Task {task_id} already {task.status.value}; there is nothing to stop.",
                         status=task.status.value)
    runner = services.runner
    content = {"task_id": task_id, "status": task.status.value, "stop_requested": True,
               "status_url": _task_links(request, task_id)["status_url"],
               "received_by": {"host": runner.worker.host, "pid": runner.worker.pid}}
    if task.status is TaskStatus.STOPPED:
        return JSONResponse({**content, "detail": "The task is stopped."}, status_code=200)
    return JSONResponse({**content, "detail": "Stop requested; the task stops within seconds."}, status_code=202)


@router.get("/tasks", summary="List tasks, newest first",
            responses={**answer(200, TaskList, "One page of tasks, newest first."), **errors(*GUARDED, 422, 503)})
def list_tasks(
    services: ServicesDep,
    _: Viewer,
    status: TaskStatus | None = None,
    step: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="The next_cursor of the previous page.")] = None,
) -> dict[str, Any]:
    """Tasks newest first, filtered by status and step; follow `next_cursor` for the next page."""
    if cursor is not None and not is_task_id(cursor):
        raise BadRequest("The cursor is not valid; pass the next_cursor value of the previous page.")
    tasks, next_cursor = services.store.list_tasks(status=status, step=step, limit=limit, cursor=cursor)
    return {"tasks": [t.summary_view() for t in tasks], "count": len(tasks), "next_cursor": next_cursor}


def _describe(step: registry.Step) -> dict[str, Any]:
    return {"name": step.name, "title": step.title, "description": step.description,
            "diagnostic": step.diagnostic, "parameters": step.parameters_schema()}


@router.get("/steps", summary="The step catalogue", responses=errors(*GUARDED))
async def list_steps(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """Every step with its parameters' JSON schema."""
    steps = registry.available(services.settings.diagnostic_steps)
    return {"steps": [_describe(s) for s in steps.values()], "count": len(steps)}


@router.get("/steps/{step_name}", summary="One step", responses=errors(*GUARDED, 404))
async def get_step(step_name: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """One step with its parameters' JSON schema."""
    return _describe(_step(services, step_name))

