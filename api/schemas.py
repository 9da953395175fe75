"""The shapes of the API's answers, for the OpenAPI document.

Hot endpoints build their JSON themselves (a JSONResponse skips FastAPI's validation and
encoding), so these models only document: routes name them in ``responses=``, never as a
``response_model`` that would run on every answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field

from api.task import TaskStatus


class Check(BaseModel):
    model_config = ConfigDict(extra="allow")

    ok: bool
    detail: str | None = None


class HealthBody(BaseModel):
    """The same shape healthy (200) or not (503): ``failing`` names the checks that fail."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(description="ok or failing.")
    failing: list[str]
    checks: dict[str, Check]


class ErrorBody(BaseModel):
    """Every error answer: a human sentence, sometimes with more fields (e.g. ``status``, ``reference``)."""

    model_config = ConfigDict(extra="allow")

    detail: str = Field(description="What went wrong, in a sentence.")


class FieldError(BaseModel):
    loc: list[str] = Field(description="Where the value is, e.g. ['parameters', 'seconds'] or ['body', 'hour'].")
    field: str = Field(description="`loc` joined with dots, e.g. parameters.seconds.")
    msg: str
    type: str = Field(description="The kind of error, e.g. missing, float_parsing, extra_forbidden, finite_number.")


class ValidationErrorBody(BaseModel):
    """A 422: the sentence names every bad field; ``errors`` lists them one by one."""

    detail: str
    errors: list[FieldError]


class TaskAccepted(BaseModel):
    task_id: str
    status: TaskStatus = Field(description="running, or queued when every slot is busy.")
    step_name: str
    created_at: str
    status_url: str
    output_url: str


class Worker(BaseModel):
    host: str
    pid: int


class StopAnswer(BaseModel):
    task_id: str
    status: TaskStatus
    stop_requested: bool
    status_url: str
    received_by: Worker = Field(description="The worker that took the request (any worker can).")
    detail: str


class TaskSummary(BaseModel):
    task_id: str
    step_name: str
    status: TaskStatus
    progress: float
    created_at: str
    started_at: str | None
    completed_at: str | None
    duration_seconds: float | None
    error_type: str | None
    attempt: int = Field(description="1, or the attempt it is on when its retry policy tried again.")
    parent_id: str | None = Field(description="The pipeline task a node's task belongs to; null otherwise.")
    node: str | None = Field(description="The node's name in that pipeline; null otherwise.")


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    count: int
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


ERROR_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON, a value such as the cursor is not valid, or the Host is not "
         "a name of this server (see ETL_ALLOWED_HOSTS).",
    401: "An API key is needed (Authorization: Bearer <key> or X-API-Key), or the key is not valid.",
    403: "The key's role may not do this, or a cross-site request was refused (foreign Origin).",
    404: "No such task (it never existed or it expired), or no such step.",
    409: "The task or the service is not in a state that allows this.",
    413: "The request body is larger than ETL_MAX_BODY_BYTES.",
    422: "Invalid values: each bad field is named.",
    429: "The queue is full or the key's rate limit is reached; retry after Retry-After seconds.",
    503: "The task store is unavailable, or this worker is shutting down; retry.",
}
# What every route behind the Host check and the keys can answer besides its own codes.
GUARDED = (400, 401)


def errors(*codes: int, json_route: bool = True) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error codes, with the shared error bodies.

    ``json_route=False`` for a route whose own answer is not JSON (its errors still are).
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        model = ValidationErrorBody if code == 422 else ErrorBody
        if json_route:
            out[code] = {"model": model, "description": ERROR_DESCRIPTIONS[code]}
        else:
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            out[code] = {"description": ERROR_DESCRIPTIONS[code], "content": {"application/json": {"schema": ref}}}
    return out


def answer(code: int, model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": model, "description": description}}


def install_openapi(app: FastAPI) -> None:
    """Drop the 422 FastAPI adds to every route with parameters: routes declare the 422s they really send."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    response = operation.get("responses", {}).get("422", {})
                    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                    if schema.get("$ref", "").endswith("/HTTPValidationError"):
                        del operation["responses"]["422"]
            schemas = spec.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            _show_security(app, spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _show_security(app: FastAPI, spec: dict[str, Any]) -> None:
    """The key schemes on every operation whose route checks a role (the checks declare none)."""
    from api.deps import SECURITY_OPENAPI, checks_role, security_schemes  # deps imports the store

    guarded = False
    for route in iter_route_contexts(app.routes):  # the routes of included routers too
        if isinstance(route.original_route, APIRoute) and route.include_in_schema and checks_role(route.dependant):
            for method in route.methods:
                operation = spec["paths"][route.path_format][method.lower()]
                operation.setdefault("security", SECURITY_OPENAPI["security"])
                guarded = True
    if guarded:
        spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(security_schemes())
