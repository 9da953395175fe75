"""The HTTP trust boundary and hostile input, against real servers: Host and Origin checks, the anonymous role,
forwarded addresses, strict JSON, streamed bodies, the audit log's bounds, the request-head timeout, OpenAPI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from api.settings import SettingsError, load_settings
from tests.scaleout import backend_server
from tests.server import ROOT, Server, free_port


# A server as it starts out of the box: no keys, no allowed hosts, no proxies, anonymous role left
# default; in both modes (the trust boundary is the API's, whatever runs the steps).
plain = backend_server(workers=2, anonymous_role=None)


def _fresh(srv: Server) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=30)


def _audit(srv: Server) -> list[dict]:
    return [json.loads(line) for line in (srv.storage / "audit.log").read_text(encoding="utf-8").splitlines()]


def _task_ids(srv: Server) -> set[str]:
    return {t["task_id"] for t in srv.client.get("/tasks", params={"limit": 500}).json()["tasks"]}


@pytest.mark.server
def test_11_foreign_host_and_cross_site_requests_are_refused(plain: Server):
    """Finding 11: a request with a foreign Host (DNS rebinding) or a foreign Origin starts nothing and cleans nothing."""
    before = _task_ids(plain)
    port = plain.port
    with _fresh(plain) as client:
        for path in ("/run/diag_noop", "/cleanup/now"):
            refused = client.post(path, headers={"Host": "evil.example", "Origin": "http://evil.example"})
            assert refused.status_code == 400, (path, refused.text)
            assert "ETL_ALLOWED_HOSTS" in refused.json()["detail"]
        assert client.get("/tasks", headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert client.get("/status/x", headers={"Host": "rebound.attacker.test."}).status_code == 400
        cross_site = client.post("/run/diag_noop", headers={"Origin": "http://evil.example"})
        assert cross_site.status_code == 403 and "Origin" in cross_site.json()["detail"]
        assert client.post("/run/diag_noop", headers={"Origin": "null"}).status_code == 403
        no_origin = client.post("/run/diag_noop", headers={"Sec-Fetch-Site": "cross-site"})
        assert no_origin.status_code == 403
        # probes keep answering whatever name they use
        assert client.get("/livez", headers={"Host": "evil.example"}).status_code == 200
        assert client.get("/health", headers={"Host": "10.1.2.3:9"}).status_code == 200
        assert _task_ids(plain) == before  # nothing started
        accepted = []
        for headers in ({"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"}, {"Host": "127.0.0.1"},
                        {"Host": f"LOCALHOST:{port}", "Origin": f"http://localhost:{port}"},
                        {"Origin": plain.url, "Sec-Fetch-Site": "same-origin"}):
            answer = client.post("/run/diag_noop", headers=headers)
            assert answer.status_code == 202, (headers, answer.text)
            accepted.append(answer.json()["task_id"])
        assert client.get("/tasks", headers={"Host": f"127.0.0.1:{port}"}).status_code == 200
    assert _task_ids(plain) - before == set(accepted)
    denied = [e for e in _audit(plain) if e["action"] == "denied" and e["status"] in (400, 403)]
    assert len(denied) >= 6 and all(e["client"] == "127.0.0.1" for e in denied)


@pytest.mark.server
def test_11_anonymous_callers_are_operators_unless_admin_is_opted_in(plain: Server, make_server, tmp_path):
    """Finding 11: without keys a local caller runs and stops tasks but cannot clean up or reschedule."""
    with _fresh(plain) as client:
        task = client.post("/run/diag_sleep", json={"parameters": {"seconds": 5}})
        assert task.status_code == 202
        assert client.post(f"/stop/{task.json()['task_id']}").status_code in (200, 202)
        for path, body in (("/cleanup/now", None), ("/cleanup/schedule", {"interval_seconds": 60})):
            refused = client.post(path, json=body)
            assert refused.status_code == 403, refused.text
            assert "ETL_ANONYMOUS_ROLE" in refused.json()["detail"]
        assert client.get("/cleanup/schedule").status_code == 200

    srv: Server = make_server(tmp_path / "opted-in", backend=plain.backend, workers=1,
                              anonymous_role="admin",
                              allowed_hosts="etl.internal, Reports.Example.:443", cors_origins="http://dash.example")
    with _fresh(srv) as client:
        assert client.post("/cleanup/now", headers={"Host": "etl.internal:8000"}).status_code == 200
        assert client.post("/cleanup/now", headers={"Host": "reports.example"}).status_code == 200
        assert client.post("/run/diag_noop", headers={"Origin": "http://dash.example"}).status_code == 202
        assert client.post("/run/diag_noop", headers={"Origin": "http://etl.internal"}).status_code == 403
        assert client.post("/run/diag_noop", headers={"Host": "other.internal"}).status_code == 400


@pytest.mark.server
def test_11_without_keys_the_server_binds_to_loopback_only(tmp_path, monkeypatch):
    """Finding 11: no keys and a public address (ETL_HOST, or gunicorn -b) stops the start; ALLOWED_HOSTS=* needs keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_STORAGE_DIR=str(tmp_path / "s"), ETL_PORT=str(free_port()))
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: nothing can ever listen on it here.
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"192.0.2.1:{free_port()}"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    assert proc.returncode != 0
    assert "refusing to bind to 192.0.2.1 without API keys" in output, output[-2000:]
    assert "Traceback" not in output

    monkeypatch.setenv("ETL_ALLOWED_HOSTS", "*")
    with pytest.raises(SettingsError, match="DNS rebinding"):
        load_settings()
    monkeypatch.setenv("ETL_API_KEYS", "admin:k")
    assert load_settings().allowed_host_list == ["*"]
    monkeypatch.setenv("ETL_TRUSTED_PROXIES", "10.0.0.0/8, proxy.example")
    with pytest.raises(SettingsError, match="ETL_TRUSTED_PROXIES"):
        load_settings()


@pytest.mark.server
def test_12_forwarded_for_counts_only_from_a_trusted_proxy(plain: Server, make_server, tmp_path):
    """Finding 12: X-Forwarded-For from any client is not the caller's address; from a configured proxy it is."""
    with _fresh(plain) as client:
        task = client.post("/run/diag_noop", headers={"X-Forwarded-For": "6.6.6.6"}).json()
    assert plain.status(task["task_id"])["requested_by"]["client"] == "127.0.0.1"
    entry = next(e for e in _audit(plain) if e.get("task_id") == task["task_id"])
    assert entry["client"] == "127.0.0.1"

    srv: Server = make_server(tmp_path / "proxied", backend=plain.backend, workers=1,
                              trusted_proxies="127.0.0.1/32, 10.0.0.0/8")
    cases = {
        "203.0.113.7": "203.0.113.7",
        "6.6.6.6, 203.0.113.7": "203.0.113.7",  # the client can write the left part, not the right
        "203.0.113.7, 10.1.1.1": "203.0.113.7",  # skipped: a second proxy of ours
        "not-an-ip, 10.1.1.1": "10.1.1.1",
    }
    for forwarded, expected in cases.items():
        with _fresh(srv) as client:
            task = client.post("/run/diag_noop", headers={"X-Forwarded-For": forwarded}).json()
        assert srv.status(task["task_id"])["requested_by"]["client"] == expected, forwarded
        entry = next(e for e in _audit(srv) if e.get("task_id") == task["task_id"])
        assert entry["client"] == expected


def _post_raw(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.server
def test_15_hostile_json_is_a_clear_4xx_on_every_endpoint(plain: Server):
    """Finding 15: a lone surrogate, NaN/Infinity, huge or overflowing numbers and long time zones are 4xx, never 500."""
    with _fresh(plain) as client:
        surrogate = _post_raw(client, "/run/diag_noop", rb'{"parameters": {"note": "a\ud800b"}}')
        assert surrogate.status_code == 422, surrogate.text
        assert surrogate.json()["errors"][0]["field"] == "body.parameters.note"
        key = _post_raw(client, "/run/diag_noop", rb'{"parameters": {"\udc00": 1}}')
        assert key.status_code == 422, key.text
        for constant in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
            answer = _post_raw(client, "/run/diag_noop", b'{"parameters": {"x": [1, %s]}}' % constant)
            assert answer.status_code == 422, (constant, answer.text)
            assert answer.json()["errors"][0]["loc"] == ["body", "parameters", "x", "1"]
            assert constant.decode() in answer.json()["detail"]
        schedule = _post_raw(client, "/cleanup/schedule", b'{"interval_seconds": NaN}')
        assert schedule.status_code == 422, schedule.text
        for path, body in (("/run/diag_noop", b'{"parameters": {"x": "\xff"}}'),
                           ("/run/diag_noop", b"[" * 100_000 + b"]" * 100_000),
                           ("/run/diag_noop", b'{"parameters": {"n": 1%s}}' % (b"0" * 5000)),
                           ("/cleanup/schedule", b'{"hour": 1,')):
            answer = _post_raw(client, path, body)
            assert answer.status_code == 400, (body[:40], answer.text)
            assert "JSON" in answer.json()["detail"] or "UTF-8" in answer.json()["detail"] \
                or "nested" in answer.json()["detail"]
        # a valid surrogate pair is text: accepted and echoed as the character
        pair = _post_raw(client, "/run/diag_noop", rb'{"parameters": {"smile": "\ud83d\ude00", "n": 1.5}}')
        assert pair.status_code == 202, pair.text
        assert plain.wait_for(pair.json()["task_id"])["output"] == {"smile": "\N{GRINNING FACE}", "n": 1.5}

    assert "unexpected error" not in plain.log_text()


def test_a_body_sent_without_a_json_content_type_is_told_what_to_send(plain: Server):
    # curl -d '{...}' without -H sends application/x-www-form-urlencoded: FastAPI does not read it as JSON.
    for content_type, came in (("application/x-www-form-urlencoded", "as application/x-www-form-urlencoded"),
                               ("text/plain", "as text/plain"), (None, "without a Content-Type")):
        headers = {"content-type": content_type} if content_type else {}
        answer = plain.client.post("/run/diag_noop", content=b'{"parameters": {}}', headers=headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["loc"] == ["body"]
        assert f"must be JSON sent with Content-Type: application/json (it came {came})" in answer.json()["detail"]
    wrong_shape = plain.client.post("/run/diag_noop", json=[1])
    assert wrong_shape.status_code == 422 and "valid dictionary" in wrong_shape.json()["detail"]


def test_15_schedule_bounds_for_an_admin(make_server, tmp_path):
    """Finding 15: /cleanup/schedule with interval_seconds 1e308 or a 10,000-character time zone is a 422."""
    srv: Server = make_server(tmp_path / "admin", workers=1, anonymous_role="admin")
    for body, field in (({"interval_seconds": 1e308}, "interval_seconds"),
                        ({"hour": 1, "timezone": "A" * 10_000}, "timezone"),
                        ({"hour": 1, "timezone": "../../etc/passwd"}, "time zone")):
        with _fresh(srv) as client:
            answer = client.post("/cleanup/schedule", json=body)
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["detail"]
    with _fresh(srv) as client:
        assert client.post("/cleanup/schedule", json={"interval_seconds": 3600}).status_code == 200
        assert client.get("/cleanup/schedule").json()["interval_seconds"] == 3600
    assert "unexpected error" not in srv.log_text()


def test_16_a_chunked_body_over_the_limit_is_413(make_server, tmp_path):
    """Finding 16: a body sent chunked (no Content-Length) over ETL_MAX_BODY_BYTES gets 413, not 400."""
    srv: Server = make_server(tmp_path / "limit", workers=1, max_body_bytes=4096)

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"parameters": {"pad": "'
        for _ in range(total // 512):
            yield b"x" * 512
        yield b'"}}'

    with _fresh(srv) as client:
        too_large = client.post("/run/diag_noop", content=chunks(20_000), headers={"content-type": "application/json"})
        assert too_large.status_code == 413, too_large.text
        assert "4096" in too_large.json()["detail"]
        assert too_large.headers["x-content-type-options"] == "nosniff"
    with _fresh(srv) as client:
        small = client.post("/run/diag_noop", content=chunks(1024), headers={"content-type": "application/json"})
        assert small.status_code == 202, small.text
    assert srv.wait_for(small.json()["task_id"])["output"] == {"pad": "x" * 1024}
    with _fresh(srv) as client:
        declared = client.post("/run/diag_noop", content=b" " * 5000, headers={"content-type": "application/json"})
        assert declared.status_code == 413


def test_17_the_audit_log_keeps_summaries_and_rotates(make_server, tmp_path):
    """Finding 17: audit lines do not carry whole parameters, and the log rotates by size keeping N files."""
    srv: Server = make_server(tmp_path / "audit", workers=2, audit_log_max_mb=0.02, audit_log_backups=2)
    big = "y" * 900_000
    with _fresh(srv) as client:
        for number in range(5):
            answer = client.post("/run/diag_noop", json={"parameters": {"blob": big, "n": number}})
            assert answer.status_code == 202
        runs = [e for e in _audit(srv) if e["action"] == "run"]
        assert len(runs) == 5
        for entry in runs:
            assert entry["params"]["truncated"] is True and entry["params"]["bytes"] > 900_000
            assert {"blob", "n"} <= set(entry["params"]["keys"]) and len(entry["params"]["sha256"]) == 64
        assert all(len(line) < 3000 for line in (srv.storage / "audit.log").read_text().splitlines())
        # small runs keep their parameters whole
        client.post("/run/diag_noop", json={"parameters": {"fund": "Fundo Ação"}})
        assert _audit(srv)[-1]["params"]["fund"] == "Fundo Ação"
        for _ in range(300):  # refused requests are audited too: enough lines to rotate twice over
            assert client.get("/tasks", headers={"Host": "evil.example"}).status_code == 400
    names = sorted(p.name for p in srv.storage.iterdir() if p.name.startswith("audit.log"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2"], names
    for name in names:
        assert (srv.storage / name).stat().st_size <= 0.02 * 1024 * 1024
        for line in (srv.storage / name).read_text(encoding="utf-8").splitlines():
            json.loads(line)  # whole lines only


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except BlockingIOError:
        return False


@pytest.mark.parametrize("kind", ["gunicorn", "serve"])
def test_17_half_open_connections_are_closed_after_the_header_timeout(make_server, tmp_path, kind):
    """Finding 17: connections that send nothing or an incomplete request head are closed after ETL_HEADER_TIMEOUT_SECONDS."""
    srv: Server = make_server(tmp_path / kind, kind=kind, workers=1, header_timeout_seconds=1)
    task = srv.run("diag_sleep", seconds=30)
    sockets: list[socket.socket] = []
    try:
        for number in range(200):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if number % 2:
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sockets.append(sock)
        # a connection that got an answer and then starts the next head and stops
        kept = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        kept.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in kept.recv(4096)
        kept.sendall(b"GET /livez HTTP/1.1\r\n")
        sockets.append(kept)
        # a long-poll that sent its head in time is not cut by the timeout
        with _fresh(srv) as client:
            waited = client.get(f"/status/{task['task_id']}", params={"wait": 2.5})
            assert waited.status_code == 200
        for sock in sockets:
            sock.setblocking(False)
        deadline = time.monotonic() + 15
        open_ones = list(sockets)
        while open_ones and time.monotonic() < deadline:
            open_ones = [s for s in open_ones if not _closed(s)]
            time.sleep(0.1)
        assert not open_ones, f"{len(open_ones)} of {len(sockets)} half-open connections still open"
        with _fresh(srv) as client:
            assert client.get("/livez").status_code == 200
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.server
def test_openapi_documents_each_code_and_the_real_error_shapes(plain: Server):
    """OpenAPI: every endpoint lists the codes it answers, with the shared error bodies, and the 422 schema is what is sent."""
    spec = plain.client.get("/openapi.json").json()
    expected = {
        ("post", "/run/{step_name}"): {202, 400, 401, 403, 404, 413, 422, 429, 503},
        ("get", "/status/{task_id}"): {200, 400, 401, 404, 422, 503},
        ("get", "/output/{task_id}"): {200, 400, 401, 404, 409, 503},
        ("get", "/logs/{task_id}"): {200, 400, 401, 404, 422, 503},
        ("post", "/stop/{task_id}"): {200, 202, 400, 401, 403, 404, 409, 503},
        ("get", "/tasks"): {200, 400, 401, 422, 503},
        ("get", "/steps"): {200, 400, 401},
        ("get", "/steps/{step_name}"): {200, 400, 401, 404},
        ("get", "/livez"): {200},
        ("get", "/health"): {200, 503},
        ("get", "/stats"): {200, 400, 401, 503},
        ("get", "/metrics"): {200, 400, 401, 503},
        ("post", "/cleanup/now"): {200, 400, 401, 403, 409, 503},
        ("get", "/cleanup/schedule"): {200, 400, 401, 503},
        ("post", "/cleanup/schedule"): {200, 400, 401, 403, 413, 422, 503},
    }
    schemas = spec["components"]["schemas"]

    def schema_of(method: str, path: str, code: int) -> dict:
        response = spec["paths"][path][method]["responses"][str(code)]
        return response["content"]["application/json"]["schema"]

    for (method, path), codes in expected.items():
        documented = {int(code) for code in spec["paths"][path][method]["responses"]}
        assert documented == codes, (method, path, sorted(documented))
        for code in codes - {200, 202}:
            ref = schema_of(method, path, code)["$ref"].rsplit("/", 1)[-1]
            wanted = {422: "ValidationErrorBody"}.get(code, "HealthBody" if path == "/health" else "ErrorBody")
            assert ref == wanted, (method, path, code, ref)
    assert "HTTPValidationError" not in schemas

    # the documented 422 is the one sent
    with _fresh(plain) as client:
        sent = client.post("/run/diag_sleep", json={"parameters": {"seconds": "soon"}}).json()
    error_schema = schemas["ValidationErrorBody"]
    assert set(sent) == set(error_schema["properties"]) == set(error_schema["required"])
    field_schema = schemas[error_schema["properties"]["errors"]["items"]["$ref"].rsplit("/", 1)[-1]]
    assert set(sent["errors"][0]) == set(field_schema["properties"])

    # and so are the bodies of /run, /stop and /tasks
    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    assert schema_of("post", "/run/{step_name}", 202)["$ref"].endswith("/TaskAccepted")
    assert schema_of("post", "/stop/{task_id}", 202)["$ref"].endswith("/StopAnswer")
    assert schema_of("get", "/tasks", 200)["$ref"].endswith("/TaskList")
    with _fresh(plain) as client:
        accepted = client.post("/run/diag_sleep", json={"parameters": {"seconds": 10}})
        stopped = client.post(f"/stop/{accepted.json()['task_id']}")
        listed = client.get("/tasks", params={"limit": 1}).json()
    assert set(accepted.json()) == fields("TaskAccepted")
    assert set(stopped.json()) == fields("StopAnswer")
    assert set(listed) == fields("TaskList") and set(listed["tasks"][0]) == fields("TaskSummary")


def test_15_every_route_with_a_body_parses_it_strictly():
    """Finding 15: a router added later must use StrictJsonRoute too, or its bodies skip the strict JSON parse."""
    from fastapi.routing import APIRoute

    from api.json_body import StrictJsonRoute
    from api.main import create_app
    from api.settings import Settings

    def walk(routes):
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI keeps included routers whole
            yield from walk(included.routes) if included is not None else [route]

    routes = [r for r in walk(create_app(Settings()).routes) if isinstance(r, APIRoute) and r.body_field is not None]
    assert routes, "no route takes a body?"
    loose = [r.path for r in routes if not isinstance(r, StrictJsonRoute)]
    assert not loose, f"routes parsing bodies with the lenient parser: {loose}; use APIRouter(route_class=StrictJsonRoute)"


def test_a_cookie_or_event_cursor_with_odd_characters_is_a_clear_4xx_not_a_500():
    """A non-ASCII session signature made hmac raise TypeError; '²' passed isdigit() but not int()."""
    from starlette.requests import Request

    from api.auth import KeyRing
    from api.errors import BadRequest, Unauthorized
    from api.events import parse_feed_cursor, parse_task_cursor
    from api.sessions import Sessions

    sessions = Sessions(b"k" * 32, KeyRing.from_settings(__import__("api.settings", fromlist=["Settings"])
                                                         .Settings.model_construct(api_keys="", api_keys_file=None)),
                        3600)
    scope = {"type": "http", "headers": [(b"cookie", "etl_session=abc.é".encode("latin-1"))]}
    with pytest.raises(Unauthorized):
        sessions.read(Request(scope))
    for bad in ("²", "1-²", "x-1"):
        with pytest.raises(BadRequest):
            parse_task_cursor(bad)
    with pytest.raises(BadRequest):
        parse_feed_cursor("²")
    assert parse_task_cursor("12-3") == (12, 3) and parse_feed_cursor("7") == 7
