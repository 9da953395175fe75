"""The WebSocket at ``/ws``: the old dashboard's messages (``status``, ``progress``, ``log``,
``job_complete``) for the channels a client subscribes to (``task:<id>`` or ``global``).

Client messages: ``{"action": "subscribe" | "unsubscribe", "channel": "task:<id>" | "global"}``
(``"type"`` is accepted for ``"action"``). Each subscribed channel is fed by the same streams as
SSE; a task channel ends by itself after ``job_complete``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from api.events import TERMINAL, EventHub, Item, TaskStream, feed_items
from api.store import TaskStore
from api.task import is_task_id

MAX_CHANNELS = 100


def _message(item: Item) -> dict[str, Any] | None:
    data = item.data
    if item.event == "log":
        return {"type": "log", "task_id": data["task_id"], "line_number": data["line"], "message": data["text"]}
    if item.event == "progress":
        return {"type": "progress", "task_id": data["task_id"], "progress": data["progress"],
                "message": data["message"]}
    if item.event == "status":
        return {"type": "status", "task_id": data["task_id"], "step_name": data["step_name"],
                "status": data["status"], "progress": data["progress"], "message": data["message"],
                "stop_requested": data["stop_requested"], "at": data["at"]}
    return None


def _job_complete(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "job_complete", "task_id": data["task_id"], "step_name": data["step_name"],
            "status": data["status"], "duration_seconds": data.get("duration_seconds"),
            "error_type": data.get("error_type"), "stopped_by": data.get("stopped_by")}


class Channels:
    """One WebSocket connection's subscriptions."""

    def __init__(self, websocket: WebSocket, store: TaskStore, hub: EventHub) -> None:
        self.websocket, self.store, self.hub = websocket, store, hub
        self._feeds: dict[str, asyncio.Task] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_json(message)

    async def run(self) -> None:
        try:
            while True:
                try:
                    message = await self.websocket.receive_json()
                except (ValueError, KeyError):
                    await self.send({"type": "error", "detail": "Messages must be JSON objects."})
                    continue
                await self._handle(message)
        except WebSocketDisconnect:
            pass
        finally:
            for feed in self._feeds.values():
                feed.cancel()

    async def _handle(self, message: Any) -> None:
        if not isinstance(message, dict):
            await self.send({"type": "error", "detail": "Messages must be JSON objects."})
            return
        action = message.get("action") or message.get("type")
        channel = message.get("channel")
        if action not in ("subscribe", "unsubscribe") or not isinstance(channel, str):
            await self.send({"type": "error", "detail": 'Send {"action": "subscribe" or "unsubscribe", '
                                                        '"channel": "task:<id>" or "global"}.'})
            return
        if action == "unsubscribe":
            feed = self._feeds.pop(channel, None)
            if feed is not None:
                feed.cancel()
            await self.send({"type": "unsubscribed", "channel": channel})
            return
        if channel in self._feeds and not self._feeds[channel].done():
            await self.send({"type": "subscribed", "channel": channel})
            return
        if channel == "global":
            items = feed_items(self.store, self.hub, None, frozenset(), frozenset())
        elif channel.startswith("task:") and is_task_id(channel[5:]):
            items = TaskStream(self.store, self.hub, channel[5:], None).items()
        else:
            await self.send({"type": "error", "channel": channel,
                             "detail": "Unknown channel; use task:<task id> or global."})
            return
        if len(self._feeds) >= MAX_CHANNELS:
            await self.send({"type": "error", "detail": f"At most {MAX_CHANNELS} channels per connection."})
            return
        await self.send({"type": "subscribed", "channel": channel})
        self._feeds[channel] = asyncio.get_running_loop().create_task(self._forward(channel, items))

    async def _forward(self, channel: str, items: Any) -> None:
        """A task channel sends ``job_complete`` after the task's last log line; ``global`` right
        after each task's final status."""
        ended: dict[str, Any] | None = None
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            async for item in items:
                if item.event == "end":
                    if item.data.get("status") is None:
                        await self.send({"type": "error", "channel": channel, "detail": item.data.get("detail")})
                    elif ended is not None:
                        await self.send({**_job_complete(ended), "channel": channel})
                    continue
                message = _message(item)
                if message is not None:
                    await self.send({**message, "channel": channel})
                if item.event == "status" and item.data["status"] in TERMINAL:
                    ended = item.data
                    if channel == "global":
                        await self.send({**_job_complete(ended), "channel": channel})
        self._feeds.pop(channel, None)
