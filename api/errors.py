"""The API's exceptions and the one place that maps them (and framework errors) to HTTP answers."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """The request could not be served."""

    status_code = 500

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None,
                 retry_after_seconds: int | None = None, **extra: Any) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.headers = headers
        self.retry_after_seconds = retry_after_seconds
        if retry_after_seconds is not None:
            self.headers = {**(headers or {}), "Retry-After": str(retry_after_seconds)}
        self.extra = extra
        super().__init__(self.detail)


class BadRequest(ApiError):
    """The request is malformed."""

    status_code = 400


class Unauthorized(ApiError):
    """An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."""

    status_code = 401


class Forbidden(ApiError):
    """This API key's role may not do that."""

    status_code = 403


class NotFound(ApiError):
    """Not found."""

    status_code = 404


class TaskNotFound(NotFound):
    """No task with that id exists (it never did, or it expired)."""


class WrongState(ApiError):
    """The task is not in a state that allows this."""

    status_code = 409


class Conflict(ApiError):
    """The request conflicts with the current state."""

    status_code = 409


class PayloadTooLarge(ApiError):
    """The request body is too large."""

    status_code = 413


class InvalidParameters(ApiError):
    """The parameters are invalid."""

    status_code = 422


class QueueFull(ApiError):
    """The task queue is full; retry later."""

    status_code = 429


class RateLimited(ApiError):
    """Too many requests with this API key; retry later."""

    status_code = 429


class StorageUnavailable(ApiError):
    """The task store is unavailable; retry later."""

    status_code = 503


class ShuttingDown(ApiError):
    """This worker is shutting down and accepts no new tasks; retry."""

    status_code = 503


def _body(detail: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, **extra}


def field_errors(errors: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as stable ``{loc, field, msg, type}`` dicts, located under ``prefix``."""
    out = []
    for error in errors:
        loc = [str(part) for part in (*prefix, *error.get("loc", ()))]
        out.append({"loc": loc, "field": ".".join(loc), "msg": error.get("msg", ""), "type": error.get("type", "")})
    return out


def describe_field_errors(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field'] or 'body'}: {e['msg']}" for e in errors)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(_body(exc.detail, **exc.extra), status_code=exc.status_code, headers=exc.headers)


def _unread_body(request: Request, error: dict[str, Any]) -> dict[str, Any]:
    """A body FastAPI did not read as JSON (no JSON media type) reaches validation as bytes, and
    "not a valid dictionary" would hide why: say what to send instead."""
    if tuple(error.get("loc", ())) != ("body",) or not isinstance(error.get("input"), bytes):
        return error
    content_type = request.headers.get("content-type")
    sent = f"as {content_type}" if content_type else "without a Content-Type"
    return {**error, "msg": f"the body must be JSON sent with Content-Type: application/json (it came {sent})"}


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    raw = [_unread_body(request, error) for error in exc.errors()]
    if any(e.get("type") == "json_invalid" for e in raw):
        where = next((e.get("ctx", {}).get("error") for e in raw if e.get("type") == "json_invalid"), None)
        reason = f" ({where})" if where else ""
        return JSONResponse(_body(f"The request body is not valid JSON{reason}."), status_code=400)
    errors = field_errors(raw)
    return JSONResponse(_body(f"Invalid request: {describe_field_errors(errors)}.", errors=errors), status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        detail = f"No such endpoint: {request.method} {request.url.path}. See /docs for the API."
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    else:
        detail = str(exc.detail)
    return JSONResponse(_body(detail), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    logger.exception("unexpected error %s on %s %s", reference, request.method, request.url.path)
    return JSONResponse(
        _body(f"Internal error; the server log has the details under reference {reference}.", reference=reference),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
