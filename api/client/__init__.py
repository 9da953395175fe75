"""A Python client for the ETL Task API that runs a step and waits safely; it needs only httpx.

    from api.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as etl:
        result = etl.run("diag_noop", {"fund": "Fundo Ação"}, wait=True, timeout=600).result()

Safe by default: every ``run`` sends an ``Idempotency-Key`` (a fresh one unless given) and reuses
it on every retry, so a retried submit never starts a second task. Connection errors, ``503`` and
``429`` are retried with exponential backoff and jitter, honouring ``Retry-After``, within the
caller's timeout; other errors raise the typed exceptions of ``api.client.errors``. Waiting uses
the server's ``?wait=`` long-poll and rides out a server restart. Nothing here imports the server.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from api.client import events
from api.client.errors import (
    ApiError, BadRequest, ClientError, Conflict, Forbidden, InvalidParameters, NotFound, PayloadTooLarge,
    ServerError, ServerUnreachable, ServiceUnavailable, TaskError, TaskFailed, TaskStopped, TooManyRequests,
    Unauthorized, WaitTimeout, error_for,
)
from api.client.events import Event
from api.client.retry import RETRY_STATUSES, backoff, json_body, parse_retry_after
from api.client.task import Task

__all__ = [
    "ApiError", "BadRequest", "Client", "ClientError", "Conflict", "Event", "Forbidden", "InvalidParameters",
    "NotFound", "PayloadTooLarge", "ServerError", "ServerUnreachable", "ServiceUnavailable", "Task", "TaskError",
    "TaskFailed", "TaskStopped", "TooManyRequests", "Unauthorized", "WaitTimeout",
]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """One connection pool to one server; use it from one thread, or one Client per thread."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0, *,
                 retry_for: float = 120.0, transport: httpx.BaseTransport | None = None) -> None:
        """``timeout`` bounds each HTTP request; ``retry_for`` how long one call keeps retrying when no
        overall timeout was given (a server restart takes seconds, an outage longer)."""
        headers = {"User-Agent": "etl-task-api-client/1", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_for = retry_for
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._sse: bool | None = None  # whether the server has GET /events/{id}; learnt on first use

    @property
    def uses_event_stream(self) -> bool | None:
        """Whether following reads the server's event stream (None until a task was followed)."""
        return self._sse

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one place requests are sent and retried -----------------------------------------

    def _request(self, method: str, path: str, *, deadline: float | None = None, read_timeout: float | None = None,
                 answer_statuses: frozenset[int] = frozenset(), stream: bool = False,
                 **kwargs: Any) -> httpx.Response:
        give_up = deadline if deadline is not None else time.monotonic() + self.retry_for
        attempt = 0
        while True:
            budget = self.timeout if read_timeout is None else read_timeout
            left = give_up - time.monotonic()
            if deadline is not None:  # a server that hangs must not hold the caller past its timeout
                budget = min(budget, max(0.1, left) + 1.0)
            timeout = httpx.Timeout(budget, connect=max(0.1, min(self.timeout, left)))
            error: ApiError | None = None
            try:
                request = self._http.build_request(method, path, timeout=timeout, **kwargs)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                problem, retry_after, cause = f"{type(exc).__name__}: {exc or 'connection lost'}", None, exc
            else:
                if response.status_code < 400 or response.status_code in answer_statuses:
                    return response
                if stream:
                    response.read()
                    response.close()
                error = error_for(response.status_code, json_body(response), dict(response.headers))
                if response.status_code not in RETRY_STATUSES:
                    raise error
                problem, cause = f"{response.status_code}: {error.detail}", None
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            delay = backoff(attempt, retry_after)
            left = give_up - time.monotonic()
            if left <= 0:
                if error is not None:
                    raise error
                raise ServerUnreachable(f"{self.base_url} is unreachable ({problem}).") from cause
            delay = min(delay, left)
            logger.warning("%s %s: %s; retry %d in %.2f s", method, path, problem, attempt + 1, delay)
            time.sleep(delay)
            attempt += 1

    def _get(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return json_body(self._request("GET", path, **kwargs))

    # --- tasks -----------------------------------------------------------------------------------

    def run(self, step: str, params: dict[str, Any] | None = None, *, wait: bool = False,
            timeout: float | None = None, idempotency_key: str | None = None,
            previous_outputs: dict[str, Any] | None = None, custom_params: dict[str, Any] | None = None) -> Task:
        """Start ``step``; with ``wait``, return once it completed (raising TaskFailed/TaskStopped otherwise).

        ``timeout`` bounds everything (retried submits and the wait); when it passes the wait raises
        WaitTimeout carrying the task id, and the task keeps running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        key = idempotency_key or uuid.uuid4().hex
        body: dict[str, Any] = {"parameters": params or {}}
        if previous_outputs:
            body["previous_outputs"] = previous_outputs
        if custom_params:
            body["custom_params"] = custom_params
        try:
            response = self._request("POST", f"/run/{quote(step, safe='')}", deadline=deadline, json=body,
                                     headers={"Idempotency-Key": key})
        except ServerUnreachable as exc:
            exc.idempotency_key = key
            raise
        task = Task(self, json_body(response), idempotency_key=key,
                    replayed=response.headers.get("idempotent-replayed") == "true")
        if wait:
            task._wait(deadline)
            task.raise_for_status()
        return task

    def task(self, task_id: str) -> Task:
        """A handle on an existing task (its current state fetched)."""
        return Task(self, self.status(task_id))

    def status(self, task_id: str, *, wait: float = 0, deadline: float | None = None) -> dict[str, Any]:
        """The task's state; with ``wait`` the server answers as soon as its state or progress changes."""
        if not wait:
            return self._get(f"/status/{quote(task_id, safe='')}", deadline=deadline)
        return self._get(f"/status/{quote(task_id, safe='')}", params={"wait": round(wait, 3)},
                         deadline=deadline, read_timeout=wait + self.timeout)

    def output(self, task_id: str) -> dict[str, Any]:
        """The result of a completed task, or the error of a failed one; Conflict while it runs."""
        return self._get(f"/output/{quote(task_id, safe='')}")

    def logs(self, task_id: str, since: int = 0, *, limit: int | None = None) -> dict[str, Any]:
        """The task's log lines after line ``since``: ``{"lines": [...], "next": n, "complete": bool}``."""
        params: dict[str, Any] = {"since": since}
        if limit:
            params["limit"] = limit
        return self._get(f"/logs/{quote(task_id, safe='')}", params=params)

    def stop(self, task_id: str) -> dict[str, Any]:
        """Ask the task to stop (idempotent); Conflict if it already completed or failed."""
        return json_body(self._request("POST", f"/stop/{quote(task_id, safe='')}"))

    def tasks(self, *, status: str | None = None, step: str | None = None, page_size: int = 100) -> Iterator[dict]:
        """Every task, newest first, filtered by status and step; pages are fetched as iteration needs them."""
        cursor = None
        while True:
            params = {k: v for k, v in (("status", status), ("step", step), ("cursor", cursor)) if v}
            page = self._get("/tasks", params={**params, "limit": page_size})
            yield from page["tasks"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def steps(self, name: str | None = None) -> Any:
        """The step catalogue (a list), or one step with its parameters' JSON schema."""
        if name:
            return self._get(f"/steps/{quote(name, safe='')}")
        return self._get("/steps")["steps"]

    def health(self) -> dict[str, Any]:
        """The health checks; ``status`` is ``ok`` or ``failing`` (a failing server answers, it is not retried)."""
        return json_body(self._request("GET", "/health", answer_statuses=frozenset({503})))

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    # --- following a task ------------------------------------------------------------------------
    def follow(self, task_id: str, *, since: int = 0, timeout: float | None = None) -> Iterator[Event]:
        """The task's events until it ends: ``status``, ``progress``, ``log`` (one per line, in order), ``end``.

        Uses the server's event stream (``GET /events/{id}``, resumed with ``Last-Event-ID``) when it
        has one, else long-polls ``/status`` and reads ``/logs``. Raises WaitTimeout after ``timeout``.
        """
        return events.follow(self, task_id, since, timeout)

