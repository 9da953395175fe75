"""Live events against a real 4-worker Gunicorn: SSE across workers, exact resume, many streams, WebSocket."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request, TextMessage

from tests.scaleout import BACKENDS, CeleryServer, backend_server, start_server
from tests.server import Server

# Every stream holds in both modes: in scale-out mode the events come from Redis, and the steps run
# on a worker host, so no API worker ever sees them happen.
server = backend_server()
keyed = backend_server(workers=2, api_keys="viewer:ana:viewer-key-0001,operator:bob:operator-key-0001",
                       probe_headers={"X-API-Key": "viewer-key-0001"})


def read_sse(response: httpx.Response, until_end: bool = True, limit: int = 10_000,
             events: list[dict] | None = None) -> list[dict]:
    """The events of an SSE response as {event, id, data} (comments dropped), until `end`."""
    events, current = ([] if events is None else events), {}
    for line in response.iter_lines():
        if line == "":
            if "event" in current:
                current["data"] = json.loads(current["data"])
                events.append(current)
                if (until_end and current["event"] == "end") or len(events) >= limit:
                    return events
            current = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(": ")
            if name in ("event", "id", "data"):
                current[name] = value
    return events


def stream(client: httpx.Client, path: str, headers: dict | None = None, into: list[dict] | None = None,
           **kwargs) -> list[dict]:
    with client.stream("GET", path, headers=headers, timeout=60, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_sse(response, events=into)


def test_stream_on_one_worker_sees_changes_made_on_another(server: Server) -> None:
    clients = server.clients_by_worker(wanted=2)
    (runner_pid, runner), (watcher_pid, watcher) = list(clients.items())[:2]
    task = server.run("diag_sleep", client=runner, seconds=30)
    ran_on = server.wait_started(task["task_id"])["worker"]["pid"]
    if isinstance(server, CeleryServer):
        assert ran_on in server.host.pool_pids()
    else:
        assert ran_on == runner_pid
    seen: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        stream(watcher, f"/events/{task['task_id']}", into=seen)
        done.set()

    thread = threading.Thread(target=watch)
    thread.start()
    deadline = time.monotonic() + 20
    while not any(e["event"] == "progress" for e in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(e["event"] == "progress" for e in seen), seen
    stop = runner.post(f"/stop/{task['task_id']}")
    assert stop.status_code in (200, 202)
    assert done.wait(20), seen
    thread.join()
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "status" and seen[0]["data"]["snapshot"] is True
    assert kinds[-1] == "end" and seen[-1]["data"]["status"] == "stopped"
    statuses = [e["data"]["status"] for e in seen if e["event"] == "status"]
    assert statuses[-1] == "stopped"
    stopped = next(e for e in seen if e["event"] == "status" and e["data"]["status"] == "stopped")
    assert stopped["data"]["stopped_by"]["role"]
    assert any(e["event"] == "log" and "sleeping" in e["data"]["text"] for e in seen)
    # The watcher's worker never ran the task: everything came through the store.
    assert watcher_pid != runner_pid and ran_on != watcher_pid


def test_last_event_id_resumes_with_exactly_the_missed_events(server: Server) -> None:
    task = server.run("diag_sleep", seconds=2)
    full = stream(server.client, f"/events/{task['task_id']}")
    assert full[-1]["event"] == "end"
    ids = [e["id"] for e in full]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))), ids
    # Cut after the snapshot, after a log line, after a progress event and just before the end.
    cuts = {0, next(i for i, e in enumerate(full) if e["event"] == "log"),
            next(i for i, e in enumerate(full) if e["event"] == "progress"), len(full) - 2}
    for cut in sorted(cuts):
        for client in server.clients_by_worker(wanted=2).values():  # any worker resumes the same
            resumed = stream(client, f"/events/{task['task_id']}", headers={"Last-Event-ID": full[cut]["id"]})
            assert resumed == full[cut + 1:], f"cut after {full[cut]}"
    # The query form does the same for clients that cannot set headers.
    assert stream(server.client, f"/events/{task['task_id']}", params={"after": full[1]["id"]}) == full[2:]


def test_global_stream_filters_and_resumes(server: Server) -> None:
    with server.client.stream("GET", "/events", params={"step": "diag_fail"}, timeout=30) as response:
        lines = response.iter_lines()
        ready = read_sse_from(lines, 1)[0]
        assert ready["event"] == "ready"
        server.run("diag_noop")
        failing = server.run("diag_fail", message="on purpose")
        got = read_sse_from(lines, 1)
    assert got[0]["data"]["task_id"] == failing["task_id"] and got[0]["data"]["step_name"] == "diag_fail"
    server.wait_for(failing["task_id"])
    assert got[0]["data"]["status"] == "running"
    later = stream_n(server, "/events", 1, headers={"Last-Event-ID": got[0]["id"]}, params={"step": "diag_fail"},
                     kinds={"status"})  # progress events (any message change) may come between
    assert later[0]["data"]["task_id"] == failing["task_id"]
    assert later[0]["data"]["status"] == "failed" and later[0]["data"]["error_type"] == "DiagnosticFailure"


def read_sse_from(lines: Iterator[str], count: int, kinds: set[str] | None = None) -> list[dict]:
    events, current = [], {}
    for line in lines:
        if line == "":
            if "event" in current and (kinds is None or current["event"] in kinds):
                current["data"] = json.loads(current["data"])
                events.append(current)
                if len(events) >= count:
                    return events
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = value
    return events


def stream_n(server: Server, path: str, count: int, kinds: set[str] | None = None, **kwargs) -> list[dict]:
    with server.client.stream("GET", path, timeout=30, **kwargs) as response:
        return read_sse_from(response.iter_lines(), count, kinds)


def test_stream_errors_are_clear_4xx(server: Server) -> None:
    assert server.client.get("/events/00000000-0000-7000-8000-000000000000").status_code == 404
    bad = server.client.get(f"/events/{server.run('diag_noop')['task_id']}", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]
    assert server.client.get("/events", params={"status": "sleeping"}).status_code == 422


def _memory_mb(server: Server) -> float:
    assert server.proc is not None
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    return sum(p.memory_info().rss for p in procs) / 1024 / 1024


def test_200_streams_hold_memory_stays_flat_and_a_slow_reader_blocks_no_one(server: Server) -> None:
    async def scenario() -> tuple[list[float], int, int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            opened: list[httpx.Response] = []
            for _ in range(200):
                request = client.build_request("GET", "/events")
                response = await client.send(request, stream=True)
                assert response.status_code == 200
                opened.append(response)
            iterators = [r.aiter_lines() for r in opened]

            async def first_event(lines) -> str:
                async for line in lines:
                    if line.startswith("event: "):
                        return line

            assert set(await asyncio.gather(*(first_event(i) for i in iterators))) == {"event: ready"}
            samples = [_memory_mb(server)]
            # The first stream stops reading; the other 199 must still see every event.
            busy = [server.run("diag_noop")["task_id"] for _ in range(150)]
            for task_id in busy:
                await asyncio.to_thread(server.wait_for, task_id)
            samples.append(_memory_mb(server))

            async def count_ends(lines, want: set[str]) -> int:
                seen: set[str] = set()
                async for line in lines:
                    if line.startswith("data: "):
                        data = json.loads(line[6:])
                        if data.get("status") == "completed" and data["task_id"] in want:
                            seen.add(data["task_id"])
                            if seen == want:
                                return len(seen)
                return len(seen)

            counts = await asyncio.wait_for(asyncio.gather(*(count_ends(i, set(busy)) for i in iterators[1:])), 60)
            samples.append(_memory_mb(server))
            for response in opened:
                await response.aclose()
            return samples, min(counts), len(counts)

    samples, fewest, readers = asyncio.run(scenario())
    assert readers == 199 and fewest == 150
    assert server.client.get("/livez").status_code == 200
    # Flat: 200 open streams cost far less than a megabyte each (bounded queues, no thread each, and
    # at most a transport's write buffer for the reader that stopped). Scale-out mode's larger events
    # fill the unread sockets' buffers further: 30-70 MB there for 200 streams, under 10 MB locally.
    assert samples[-1] - samples[0] < 100, samples
    assert "Traceback" not in server.log_text()


def test_the_feed_is_a_bounded_ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.store import TaskStore, events
    from api.store.cachedb import key_count
    from api.store.keys import K_EVENTS
    from api.task import Task, TaskStatus, new_task_id, now_iso
    from api.workers import WorkerInfo

    monkeypatch.setattr(events, "EVENT_LOG_SIZE", 200)
    store = TaskStore(tmp_path / "s", tmp_path / "s" / "runs", tmp_path / "s" / "out", ttl_seconds=60,
                      max_running=1, max_queued=1, worker_lost_after_seconds=3)
    store.open()
    try:
        task = Task(task_id=new_task_id(), step_name="diag_noop", status=TaskStatus.QUEUED, created_at=now_iso())
        store.submit(task, WorkerInfo.this_process(), None)
        for n in range(330):
            store.save_progress(task.task_id, n / 10, "working", [], 0, [])
        assert store.last_event_id() == 331 and store.first_event_id() == 132
        assert key_count(store.cache, K_EVENTS) == 200
        assert [e["progress"] for e in store.events_after(task.task_id, 329, 10)] == [32.8, 32.9]
        kept = store.events_after(None, 0, 1000)
        assert [e["id"] for e in kept] == list(range(132, 332))
        assert store.get(task.task_id).event_id == 331
    finally:
        store.close()


# --- WebSocket -------------------------------------------------------------------------------


class Socket:
    """A minimal blocking WebSocket client on wsproto (the library Uvicorn serves /ws with)."""

    def __init__(self, server: Server, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{server.port}", target="/ws",
                                               extra_headers=headers or [])))
        self.pending: list = []
        self.accepted = self._until((AcceptConnection, RejectConnection))

    def _events(self):
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    def _until(self, kind):
        while True:
            event = self._events()
            if isinstance(event, (*kind, CloseConnection)):
                return event

    def send(self, message: dict) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(message))))

    def receive(self) -> dict:
        text = ""
        while True:
            event = self._events()
            if isinstance(event, CloseConnection):
                return {"closed": event.code}
            if isinstance(event, TextMessage):
                text += event.data
                if event.message_finished:
                    return json.loads(text)

    def close(self) -> None:
        self.sock.close()


def test_websocket_speaks_the_old_message_shapes(server: Server) -> None:
    ws = Socket(server)
    try:
        assert isinstance(ws.accepted, AcceptConnection)
        ws.send({"action": "subscribe", "channel": "global"})
        assert ws.receive() == {"type": "subscribed", "channel": "global"}
        task = server.run("diag_sleep", seconds=1.2)
        ws.send({"action": "subscribe", "channel": f"task:{task['task_id']}"})
        messages = []
        while not any(m.get("type") == "job_complete" and m["channel"].startswith("task:") for m in messages):
            messages.append(ws.receive())
        ws.send({"action": "unsubscribe", "channel": "global"})
        ws.send({"type": "subscribe", "channel": "nonsense"})
        tail = []
        while len(tail) < 2:  # global messages sent before the unsubscribe may still come first
            message = ws.receive()
            (tail if message["type"] in ("unsubscribed", "error") else messages).append(message)
    finally:
        ws.close()
    mine = [m for m in messages if m.get("channel") == f"task:{task['task_id']}"]
    types = {m["type"] for m in mine}
    assert {"subscribed", "status", "progress", "log", "job_complete"} <= types, types
    log = next(m for m in mine if m["type"] == "log")
    assert set(log) == {"type", "task_id", "line_number", "message", "channel"}
    progress = next(m for m in mine if m["type"] == "progress")
    assert set(progress) == {"type", "task_id", "progress", "message", "channel"}
    status = next(m for m in mine if m["type"] == "status")
    assert {"task_id", "step_name", "status", "progress", "message"} <= set(status)
    done = next(m for m in mine if m["type"] == "job_complete")
    assert done["status"] == "completed" and done["step_name"] == "diag_sleep"
    assert any(m.get("channel") == "global" and m.get("task_id") == task["task_id"] for m in messages)
    assert tail[0] == {"type": "unsubscribed", "channel": "global"}
    assert tail[1]["type"] == "error" and "Unknown channel" in tail[1]["detail"]


def test_events_and_websocket_need_a_key(keyed: Server) -> None:
    assert keyed.client.get("/events").status_code == 401
    ws = Socket(keyed)
    try:
        assert ws.receive()["status"] == 401
    finally:
        ws.close()
    ws = Socket(keyed, headers=[(b"x-api-key", b"viewer-key-0001")])
    try:
        ws.send({"action": "subscribe", "channel": "global"})
        assert ws.receive()["type"] == "subscribed"
    finally:
        ws.close()
    foreign = Socket(keyed, headers=[(b"x-api-key", b"viewer-key-0001"), (b"origin", b"http://evil.example")])
    foreign.close()
    assert isinstance(foreign.accepted, (RejectConnection, CloseConnection)), foreign.accepted


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_streams_end_cleanly_when_the_server_stops(backend: str, tmp_path: Path) -> None:
    # A stream never ends by itself: the server ends it as it starts to stop, so it does not hold the
    # connection drain for its whole length and then get cut off mid-message.
    srv = start_server(backend, tmp_path / "task_storage", workers=2)
    opened = {name: threading.Event() for name in ("global", "task")}
    outcomes: dict[str, object] = {}

    def follow(name: str, path: str) -> None:
        events: list[str] = []
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as client, client.stream("GET", path) as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        events.append(line[len("event: "):])
                        opened[name].set()
            outcomes[name] = events
        except httpx.HTTPError as exc:  # cut off mid-stream (an incomplete chunked body)
            outcomes[name] = exc

    try:
        task = srv.run("diag_sleep", seconds=120)
        readers = [threading.Thread(target=follow, args=("global", "/events")),
                   threading.Thread(target=follow, args=("task", f"/events/{task['task_id']}"))]
        for reader in readers:
            reader.start()
        assert all(event.wait(30) for event in opened.values())
        getattr(srv, "stop_api", srv.stop)()
        for reader in readers:
            reader.join(30)
        assert outcomes["global"] == ["ready"], outcomes["global"]
        assert isinstance(outcomes["task"], list) and outcomes["task"][0] == "status", outcomes["task"]
        assert "end" not in outcomes["task"]  # the task did not end; its stream did, without a false `end`
        assert "timeout graceful shutdown exceeded" not in srv.log_text()
    finally:
        srv.close()
