"""Live events: Server-Sent Events for one task or all of them, and the WebSocket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.auth import require
from api.deps import ServicesDep, Viewer, identify
from api.errors import ApiError
from api.events import RETRY_MILLISECONDS, EventHub, TaskStream, feed_items, parse_feed_cursor, parse_task_cursor
from api.task import TaskStatus
from api.websocket import Channels

router = APIRouter()

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=100,
                                           description="Resume after this event id (browsers send it on reconnect).")]
AfterQuery = Annotated[str | None, Query(max_length=100, description="The same as Last-Event-ID, for clients "
                                                                      "that cannot set headers.")]


def _hub(request: Request) -> EventHub:
    return request.app.state.events


async def _task_cursor(task_id: str, services: ServicesDep, last_event_id: LastEventId = None,
                       after: AfterQuery = None) -> tuple[int, int] | None:
    # Checked before the stream starts: once it has, an error can no longer be a 4xx answer.
    services.store.get(task_id)
    return parse_task_cursor(last_event_id or after)


async def _feed_cursor(last_event_id: LastEventId = None, after: AfterQuery = None) -> int | None:
    return parse_feed_cursor(last_event_id or after)


@router.get("/events/{task_id}", response_class=EventSourceResponse, summary="A task's live events (SSE)")
async def task_events(
    task_id: str, request: Request, services: ServicesDep, _: Viewer,
    cursor: Annotated[tuple[int, int] | None, Depends(_task_cursor)],
    since_line: Annotated[int, Query(ge=0, description="A new stream's log starts after this line.")] = 0,
) -> AsyncIterator[ServerSentEvent]:
    """`status`, `progress` and `log` events of the task, then `end`; resumable with Last-Event-ID."""
    first = True
    async for item in TaskStream(services.store, _hub(request), task_id, cursor, since_line).items():
        yield ServerSentEvent(data=item.data, event=item.event, id=item.id,
                              retry=RETRY_MILLISECONDS if first else None)
        first = False


@router.get("/events", response_class=EventSourceResponse, summary="Every task's live events (SSE)")
async def all_events(request: Request, services: ServicesDep, _: Viewer,
                     cursor: Annotated[int | None, Depends(_feed_cursor)],
                     step: Annotated[list[str] | None, Query(max_length=200, description="Only these steps.")] = None,
                     status: Annotated[list[TaskStatus] | None, Query(description="Only these states.")] = None,
                     ) -> AsyncIterator[ServerSentEvent]:
    """`status` and `progress` events of every task (or of the steps/states asked for)."""
    first = True
    statuses = frozenset(s.value for s in status or [])
    async for item in feed_items(services.store, _hub(request), cursor, frozenset(step or []), statuses):
        yield ServerSentEvent(data=item.data, event=item.event, id=item.id,
                              retry=RETRY_MILLISECONDS if first else None)
        first = False


@router.websocket("/ws")
async def events_socket(websocket: WebSocket) -> None:
    """The old dashboard's WebSocket: subscribe to `task:<id>` or `global`.

    A foreign Origin is refused before this runs (api.middleware.HostAndOriginGuard)."""
    services = websocket.app.state.services
    try:
        identity = identify(websocket, services.keys)
        require(identity, "viewer")
    except ApiError as exc:
        await websocket.accept()
        await websocket.send_json({"type": "error", "status": exc.status_code, "detail": exc.detail})
        await websocket.close(code=4000 + exc.status_code, reason=exc.detail[:120])
        return
    await websocket.accept()
    await Channels(websocket, services.store, websocket.app.state.events).run()
