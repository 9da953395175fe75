"""The client's exceptions: one base class, one subclass per answer a script handles differently.

Like the rest of ``api.client``, this module needs nothing but the standard library.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """The ETL Task API call did not succeed."""

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        super().__init__(self.detail)


class ServerUnreachable(ClientError):
    """The server could not be reached (or kept answering 503) until the time allowed ran out."""

    def __init__(self, detail: str | None = None, *, task_id: str | None = None,
                 idempotency_key: str | None = None) -> None:
        super().__init__(detail)
        # Retrying `run` with this key later can never start a second task.
        self.task_id = task_id
        self.idempotency_key = idempotency_key


class WaitTimeout(ClientError, TimeoutError):
    """The task did not end in the time allowed; it keeps running on the server."""

    def __init__(self, detail: str | None = None, *, task_id: str, status: str | None = None) -> None:
        super().__init__(detail)
        self.task_id = task_id
        self.status = status


class ApiError(ClientError):
    """The server refused the request."""

    status_code = 0

    def __init__(self, detail: str | None = None, *, status_code: int | None = None,
                 body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        if status_code is not None:
            self.status_code = status_code
        self.body = body or {}
        self.headers = headers or {}


class BadRequest(ApiError):
    """The request is malformed."""

    status_code = 400


class Unauthorized(ApiError):
    """An API key is required, or the one given is wrong (pass api_key / --api-key / ETL_API_KEY)."""

    status_code = 401


class Forbidden(ApiError):
    """This API key's role may not do that."""

    status_code = 403


class NotFound(ApiError):
    """No such task or step."""

    status_code = 404


class Conflict(ApiError):
    """The task is not in a state that allows this (or the Idempotency-Key was used for another request)."""

    status_code = 409


class PayloadTooLarge(ApiError):
    """The request body is too large."""

    status_code = 413


class InvalidParameters(ApiError):
    """The parameters are invalid."""

    status_code = 422

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The field errors: ``{"field": "parameters.seconds", "msg": ..., "loc": [...], "type": ...}``."""
        return list(self.body.get("errors", []))


class TooManyRequests(ApiError):
    """The queue is full or the key's rate limit is reached, still after the time allowed."""

    status_code = 429


class ServiceUnavailable(ApiError):
    """The server answered 503 (its store is unavailable or it is shutting down)."""

    status_code = 503


class ServerError(ApiError):
    """The server failed (5xx); its log has the details under the reference in the message."""

    status_code = 500


class TaskError(ClientError):
    """The task ended without a result."""

    def __init__(self, detail: str | None = None, *, task_id: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.task_id = task_id
        self.state = state or {}


class TaskFailed(TaskError):
    """The task failed."""

    @property
    def error_type(self) -> str | None:
        """The server's error type: the step's exception class, ``Timeout`` or ``WorkerLost``."""
        return (self.state.get("error") or {}).get("type")

    @property
    def error_message(self) -> str | None:
        return (self.state.get("error") or {}).get("message")


class TaskStopped(TaskError):
    """The task was stopped before it ended."""


BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, InvalidParameters,
                TooManyRequests, ServiceUnavailable)
}


def error_for(status_code: int, body: dict[str, Any], headers: dict[str, str]) -> ApiError:
    """The exception for an error answer, carrying the server's ``detail``."""
    cls = BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else ApiError)
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    return cls(detail or f"HTTP {status_code}", status_code=status_code, body=body, headers=headers)
