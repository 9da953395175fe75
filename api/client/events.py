"""Following a task: its events over the server's event stream when it has one, else by long-polling."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from api.client.errors import WaitTimeout, error_for
from api.client.retry import (
    FOLLOW_POLL_SECONDS, MIN_POLL_INTERVAL_SECONDS, SSE_READ_TIMEOUT_SECONDS, TERMINAL, backoff, json_body, time_left,
)

if TYPE_CHECKING:
    from api.client import Client

logger = logging.getLogger("api.client")


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



def follow(client: Client, task_id: str, since: int = 0, timeout: float | None = None) -> Iterator[Event]:
    """The task's events until it ends: ``status``, ``progress``, ``log`` (one per line, in order), ``end``.

    Uses the server's event stream (``GET /events/{id}``, resumed with ``Last-Event-ID``) when it
    has one, else long-polls ``/status`` and reads ``/logs``. Raises WaitTimeout after ``timeout``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if client._sse is not False:
        response = _open_events(client, task_id, None, deadline)
        if response is not None:
            yield from _stream_events(client, task_id, response, since, deadline)
            return
    yield from _poll_events(client, task_id, since, deadline)


def _open_events(client: Client, task_id: str, last_id: str | None, deadline: float | None) -> httpx.Response | None:
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = client._request("GET", f"/events/{quote(task_id, safe='')}", deadline=deadline, stream=True,
                             headers=headers, read_timeout=SSE_READ_TIMEOUT_SECONDS,
                             answer_statuses=frozenset({404, 405}))
    if response.status_code in (404, 405) or "text/event-stream" not in response.headers.get("content-type", ""):
        body: dict[str, Any] = {}
        if response.status_code >= 400:
            response.read()
            body = json_body(response)
        response.close()
        if response.status_code == 404 and not str(body.get("detail", "")).startswith("No such endpoint"):
            raise error_for(404, body, dict(response.headers))
        client._sse = False
        return None
    client._sse = True
    return response


def _stream_events(client: Client, task_id: str, response: httpx.Response, since: int,
                   deadline: float | None) -> Iterator[Event]:
    last_id: str | None = None
    attempt = 0
    while True:
        try:
            for event in parse_sse(response.iter_lines(), deadline, task_id):
                last_id = event.id or last_id
                attempt = 0
                if event.type == "log" and isinstance(event.data.get("line"), int) and event.data["line"] <= since:
                    continue
                yield event
                if event.type == "end":
                    return
        except httpx.TransportError as exc:
            logger.warning("event stream of task %s broke (%s); resuming after event %s", task_id, exc, last_id)
        finally:
            response.close()
        left = time_left(deadline)
        if left is not None and left <= 0:
            raise WaitTimeout(f"Task {task_id} did not end in the time allowed; it keeps running.",
                              task_id=task_id)
        time.sleep(min(backoff(attempt, None), left) if left is not None else backoff(attempt, None))
        attempt += 1
        reopened = _open_events(client, task_id, last_id, deadline)
        if reopened is None:  # the server lost its event stream (a downgrade): finish by polling
            yield from _poll_events(client, task_id, since, deadline)
            return
        response = reopened


def _poll_events(client: Client, task_id: str, since: int, deadline: float | None) -> Iterator[Event]:
    state = client.status(task_id, deadline=deadline)
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
            page = client.logs(task_id, since=line)
            for number, text in enumerate(page["lines"], line + 1):
                yield Event("log", {"task_id": task_id, "line": number, "text": text})
            line = page["next"]
            if not page["lines"] or page.get("complete") or state["status"] not in TERMINAL:
                break
        if state["status"] in TERMINAL:
            yield Event("end", state)
            return
        polled = time.monotonic()
        left = time_left(deadline)
        if left is not None and left <= 0:
            raise WaitTimeout(f"Task {task_id} is still {state['status']} after the time allowed; "
                              "it keeps running.", task_id=task_id, status=state["status"])
        wait = FOLLOW_POLL_SECONDS if left is None else max(0.0, min(FOLLOW_POLL_SECONDS, left))
        state = client.status(task_id, wait=wait, deadline=deadline)
        pause = MIN_POLL_INTERVAL_SECONDS - (time.monotonic() - polled)
        if pause > 0 and state["status"] not in TERMINAL:
            time.sleep(pause)


def parse_sse(lines: Iterator[str], deadline: float | None, task_id: str) -> Iterator[Event]:
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

