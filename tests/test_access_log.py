"""The Gunicorn workers' access log: Uvicorn's line format, written in batches, nothing lost at shutdown."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from api import access
from api.access import AccessLog
from tests.scaleout import BACKENDS, start_server

LINE = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ACCESS \[\d+\] 127\.0\.0\.1:\d+ - "(\S+) (\S+) HTTP/1\.1" (\d{3})$')


async def answer(scope, receive, send):
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def http_scope(path: str, query: bytes = b"") -> dict:
    return {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": query,
            "http_version": "1.1", "client": ("127.0.0.1", 5000), "headers": []}


async def call(app: AccessLog, scope: dict) -> None:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    await app(scope, receive, send)


def test_lines_wait_for_the_batch_then_show_method_path_and_status():
    stream = io.StringIO()
    app = AccessLog(answer, stream)

    async def scenario() -> tuple[str, str]:
        await call(app, http_scope("/status/a b", b"wait=5"))
        with pytest.raises(RuntimeError):
            await call(app, http_scope("/boom"))
        before = stream.getvalue()
        await asyncio.sleep(access.FLUSH_SECONDS + 0.3)
        return before, stream.getvalue()

    before, after = asyncio.run(scenario())
    assert before == ""  # batched, not one write per request
    lines = after.splitlines()
    assert [LINE.match(line).groups() for line in lines] == [("GET", "/status/a%20b?wait=5", "204"),
                                                              ("GET", "/boom", "500")]


def test_a_full_batch_is_written_at_once_and_the_rest_at_shutdown():
    stream = io.StringIO()
    app = AccessLog(answer, stream)

    async def lifespan_shutdown(scope, receive, send):
        await send({"type": "lifespan.shutdown.complete"})

    async def scenario() -> tuple[int, int]:
        for _ in range(access.FLUSH_LINES + 3):
            await call(app, http_scope("/livez"))
        full = len(stream.getvalue().splitlines())
        app.app = lifespan_shutdown
        await call(app, {"type": "lifespan"})
        return full, len(stream.getvalue().splitlines())

    assert asyncio.run(scenario()) == (access.FLUSH_LINES, access.FLUSH_LINES + 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gunicorn_writes_one_access_line_per_answer(tmp_path: Path, backend: str):
    srv = start_server(backend, tmp_path / "task_storage", workers=1)
    try:
        assert srv.client.get("/livez").status_code == 200
        assert srv.client.get("/status/not-a-task").status_code in (404, 422)
        task = srv.run("diag_noop")
        srv.wait_for(task["task_id"])
    finally:
        srv.close()
    requests = [LINE.match(line).groups()[:2] for line in srv.log_text().splitlines() if " ACCESS " in line]
    assert ("GET", "/livez") in requests
    assert ("GET", "/status/not-a-task") in requests
    assert ("POST", "/run/diag_noop") in requests
