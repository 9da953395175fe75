"""A Python client for the ETL Task API that runs a step and waits safely; it needs only httpx.

    from api.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as etl:
        result = etl.run("diag_noop", {"fund": "Fundo Ação"}, wait=True, timeout=600).result()

Safe by default: every ``run`` sends an ``Idempotency-Key`` (a fresh one unless given) and reuses
it on every retry, so a retried submit never starts a second task. Connection errors, ``503`` and
``429`` are retried with exponential backoff and jitter, honouring ``Retry-After``, within the
caller's timeout; other errors raise the typed exceptions of ``api.client_errors``. Waiting uses
the server's ``?wait=`` long-poll and rides out a server restart. Nothing here imports the server.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from api.client_errors import (
    ApiError, BadRequest, ClientError, Conflict, Forbidden, InvalidParameters, NotFound, PayloadTooLarge,
    ServerError, ServerUnreachable, ServiceUnavailable, TaskError, TaskFailed, TaskStopped, TooManyRequests,
    Unauthorized, WaitTimeout, error_for,
)

__all__ = [
    "ApiError", "BadRequest", "Client", "ClientError", "Conflict", "Event", "Forbidden", "InvalidParameters",
    "NotFound", "PayloadTooLarge", "ServerError", "ServerUnreachable", "ServiceUnavailable", "Task", "TaskError",
    "TaskFailed", "TaskStopped", "TooManyRequests", "Unauthorized", "WaitTimeout",
]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "stopped"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The server caps ?wait= at 60 s; 25 s keeps each long-poll under common proxy idle timeouts.
LONG_POLL_SECONDS = 25.0
# A progress change also ends a long-poll; a step reporting progress ten times a second must not
# make the waiting client poll ten times a second.
MIN_POLL_INTERVAL_SECONDS = 0.2
# Log lines do not end a long-poll, so a follower looks for new lines at least this often.
FOLLOW_POLL_SECONDS = 1.0
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 10.0
SSE_READ_TIMEOUT_SECONDS = 90.0


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; never sooner than the server's Retry-After."""
    delay = random.uniform(BACKOFF_FIRST_SECONDS / 2, min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** attempt))
    if retry_after is not None:
        # A little jitter on top, so clients told the same Retry-After do not return together.
        delay = retry_after + random.uniform(0, min(1.0, retry_after / 10))
    return delay


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text.strip()[:500] or f"HTTP {response.status_code}"}
    return body if isinstance(body, dict) else {"value": body}


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


@dataclass
class Event:
    """One event of a followed task: ``status``, ``progress``, ``log`` or ``end``."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def text(self) -> str:
        """A log event's line."""
        for name in ("text", "line", "message"):
            if isinstance(self.data.get(name), str):
                return self.data[name]
        return ""


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
                error = error_for(response.status_code, _json(response), dict(response.headers))
                if response.status_code not in RETRY_STATUSES:
                    raise error
                problem, retry_after, cause = f"{response.status_code}: {error.detail}", None, None
                retry_after = _retry_after(response.headers.get("retry-after"))
            delay = _backoff(attempt, retry_after)
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
        return _json(self._request("GET", path, **kwargs))

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
        task = Task(self, _json(response), idempotency_key=key,
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
        return _json(self._request("POST", f"/stop/{quote(task_id, safe='')}"))

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
        return _json(self._request("GET", "/health", answer_statuses=frozenset({503})))

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    # --- following a task ------------------------------------------------------------------------

    def follow(self, task_id: str, *, since: int = 0, timeout: float | None = None) -> Iterator[Event]:
        """The task's events until it ends: ``status``, ``progress``, ``log`` (one per line, in order), ``end``.

        Uses the server's event stream (``GET /events/{id}``, resumed with ``Last-Event-ID``) when it
        has one, else long-polls ``/status`` and reads ``/logs``. Raises WaitTimeout after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._sse is not False:
            response = self._open_events(task_id, None, deadline)
            if response is not None:
                yield from self._stream_events(task_id, response, since, deadline)
                return
        yield from self._poll_events(task_id, since, deadline)

    def _open_events(self, task_id: str, last_id: str | None, deadline: float | None) -> httpx.Response | None:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        response = self._request("GET", f"/events/{quote(task_id, safe='')}", deadline=deadline, stream=True,
                                 headers=headers, read_timeout=SSE_READ_TIMEOUT_SECONDS,
                                 answer_statuses=frozenset({404, 405}))
        if response.status_code in (404, 405) or "text/event-stream" not in response.headers.get("content-type", ""):
            body: dict[str, Any] = {}
            if response.status_code >= 400:
                response.read()
                body = _json(response)
            response.close()
            if response.status_code == 404 and not str(body.get("detail", "")).startswith("No such endpoint"):
                raise error_for(404, body, dict(response.headers))
            self._sse = False
            return None
        self._sse = True
        return response

    def _stream_events(self, task_id: str, response: httpx.Response, since: int,
                       deadline: float | None) -> Iterator[Event]:
        last_id: str | None = None
        attempt = 0
        while True:
            try:
                with response:
                    for event in _parse_sse(response.iter_lines(), deadline, task_id):
                        last_id = event.id or last_id
                        attempt = 0
                        if event.type == "log" and isinstance(event.data.get("line"), int) \
                                and event.data["line"] <= since:
                            continue
                        yield event
                        if event.type == "end":
                            return
            except httpx.TransportError as exc:
                logger.warning("event stream of task %s broke (%s); resuming after event %s", task_id, exc, last_id)
            left = _left(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"Task {task_id} did not end in the time allowed; it keeps running.",
                                  task_id=task_id)
            time.sleep(min(_backoff(attempt, None), left) if left is not None else _backoff(attempt, None))
            attempt += 1
            reopened = self._open_events(task_id, last_id, deadline)
            if reopened is None:  # the server lost its event stream (a downgrade): finish by polling
                yield from self._poll_events(task_id, since, deadline)
                return
            response = reopened

    def _poll_events(self, task_id: str, since: int, deadline: float | None) -> Iterator[Event]:
        state = self.status(task_id, deadline=deadline)
        seen: tuple | None = None
        line = since
        while True:
            now = (state["status"], state.get("progress"), state.get("message"))
            if seen is None or now[0] != seen[0]:
                yield Event("status", state)
            elif now != seen:
                yield Event("progress", {k: state.get(k) for k in ("task_id", "status", "progress", "message")})
            seen = now
            while True:
                page = self.logs(task_id, since=line)
                for number, text in enumerate(page["lines"], line + 1):
                    yield Event("log", {"task_id": task_id, "line": number, "text": text})
                line = page["next"]
                if not page["lines"] or page.get("complete") or state["status"] not in TERMINAL:
                    break
            if state["status"] in TERMINAL:
                yield Event("end", state)
                return
            polled = time.monotonic()
            left = _left(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"Task {task_id} is still {state['status']} after the time allowed; "
                                  "it keeps running.", task_id=task_id, status=state["status"])
            wait = FOLLOW_POLL_SECONDS if left is None else max(0.0, min(FOLLOW_POLL_SECONDS, left))
            state = self.status(task_id, wait=wait, deadline=deadline)
            pause = MIN_POLL_INTERVAL_SECONDS - (time.monotonic() - polled)
            if pause > 0 and state["status"] not in TERMINAL:
                time.sleep(pause)


def _parse_sse(lines: Iterator[str], deadline: float | None, task_id: str) -> Iterator[Event]:
    """Server-sent events as Events (``data`` decoded from JSON when it is JSON)."""
    kind, data, event_id = "message", [], None
    for line in lines:
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"Task {task_id} did not end in the time allowed; it keeps running.", task_id=task_id)
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    decoded = json.loads(text)
                except ValueError:
                    decoded = {"text": text}
                yield Event(kind, decoded if isinstance(decoded, dict) else {"value": decoded}, event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


class Task:
    """A task on the server, as last seen; ``wait`` refreshes it until it ends."""

    def __init__(self, client: Client, state: dict[str, Any], *, idempotency_key: str | None = None,
                 replayed: bool = False) -> None:
        self.client = client
        self.state = state
        self.task_id: str = state["task_id"]
        self.idempotency_key = idempotency_key
        self.replayed = replayed  # the server answered an earlier submit with the same key

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.step_name} {self.status}>"

    @property
    def status(self) -> str:
        return self.state["status"]

    @property
    def step_name(self) -> str:
        return self.state.get("step_name", "")

    @property
    def progress(self) -> float:
        return self.state.get("progress") or 0.0

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Task:
        self.state = self.client.status(self.task_id)
        return self

    def wait(self, timeout: float | None = None) -> Task:
        """Wait until the task ends (long-polls); WaitTimeout with the task id after ``timeout``."""
        self._wait(None if timeout is None else time.monotonic() + timeout)
        return self

    def _wait(self, deadline: float | None) -> None:
        polled = None
        while not self.ended:
            left = _left(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"Task {self.task_id} is still {self.status} after the time allowed; "
                                  "it keeps running.", task_id=self.task_id, status=self.status)
            if polled is not None and (pause := MIN_POLL_INTERVAL_SECONDS - (time.monotonic() - polled)) > 0:
                time.sleep(pause if left is None else min(pause, left))
            polled = time.monotonic()
            wait = LONG_POLL_SECONDS if left is None else max(0.001, min(LONG_POLL_SECONDS, left))
            try:
                self.state = self.client.status(self.task_id, wait=wait, deadline=deadline)
            except ServerUnreachable as exc:
                exc.task_id = self.task_id
                raise

    def raise_for_status(self) -> Task:
        """Raise TaskFailed or TaskStopped if the task ended so; return the task otherwise."""
        if self.status == "failed":
            error = self.state.get("error") or {}
            raise TaskFailed(f"Task {self.task_id} ({self.step_name}) failed: {error.get('type', 'Error')}: "
                             f"{error.get('message', self.state.get('message', ''))}",
                             task_id=self.task_id, state=self.state)
        if self.status == "stopped":
            raise TaskStopped(f"Task {self.task_id} ({self.step_name}) was stopped: {self.state.get('message', '')}",
                              task_id=self.task_id, state=self.state)
        return self

    def result(self, timeout: float | None = None) -> Any:
        """The step's result, once the task completed (waits for it; raises if it failed or was stopped)."""
        self.wait(timeout).raise_for_status()
        if "output" in self.state:
            return self.state["output"]
        return self.client.output(self.task_id).get("result")

    def output(self) -> dict[str, Any]:
        return self.client.output(self.task_id)

    def logs(self, since: int = 0) -> dict[str, Any]:
        return self.client.logs(self.task_id, since)

    def follow(self, since: int = 0, timeout: float | None = None) -> Iterator[Event]:
        for event in self.client.follow(self.task_id, since=since, timeout=timeout):
            if event.type in ("status", "end") and "status" in event.data:
                self.state = {**self.state, **event.data}
            yield event

    def stop(self) -> dict[str, Any]:
        return self.client.stop(self.task_id)
