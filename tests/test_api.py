"""The HTTP contract against a real 4-worker Gunicorn: answers, errors, and their shapes."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from tests.scaleout import CeleryServer, WorkerHost, backend_server
from tests.server import Server

# The contract holds in both modes: local (diskcache + threads) and celery (Redis + worker hosts).
server = backend_server()


def test_run_then_status_output_logs(server: Server):
    response = server.client.post("/run/diag_noop", json={"parameters": {"fund": "Fundo Ação", "n": 1}})
    assert response.status_code == 202
    body = response.json()
    assert set(body) >= {"task_id", "status", "step_name", "status_url", "output_url"}
    assert response.headers["location"] == body["status_url"] == f"/status/{body['task_id']}"
    final = server.wait_for(body["task_id"])
    assert final["status"] == "completed" and final["output"] == {"fund": "Fundo Ação", "n": 1}
    assert final["progress"] == 100 and final["duration_seconds"] >= 0
    for field in ("created_at", "started_at", "completed_at", "expires_at"):
        assert final[field].endswith("+00:00")
    output = server.client.get(body["output_url"]).json()
    assert output["result"] == {"fund": "Fundo Ação", "n": 1}
    logs = server.client.get(f"/logs/{body['task_id']}").json()
    assert logs["lines"] and logs["complete"]
    later = server.client.get(f"/logs/{body['task_id']}", params={"since": logs["next"]}).json()
    assert later["lines"] == [] and later["next"] == logs["next"]


def test_empty_body_and_no_content_type_are_fine(server: Server):
    assert server.client.post("/run/diag_noop").status_code == 202
    assert server.client.post("/run/diag_noop", content=b"", headers={"content-type": "application/json"}).status_code == 202


def test_failed_task_reports_error_and_traceback_only_in_output(server: Server):
    task = server.run("diag_fail", message="planned failure")
    final = server.wait_for(task["task_id"])
    assert final["status"] == "failed"
    assert final["error"] == {"type": "DiagnosticFailure", "message": "planned failure"}
    output = server.client.get(f"/output/{task['task_id']}")
    assert output.status_code == 200
    assert "Traceback" in output.json()["error"]["traceback"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code", "words"),
    [
        ("post", "/run/diag_nop", {}, 404, "Did you mean: diag_noop"),
        ("post", "/run/no_such_step_at_all", {}, 404, "GET /steps"),
        ("post", "/run/diag_noop", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         "not valid JSON"),
        ("post", "/run/diag_noop", {"json": {"parameters": {}, "paramters": {}}}, 422, "paramters"),
        ("post", "/run/diag_noop", {"json": {"parameters": [1, 2]}}, 422, "parameters"),
        ("post", "/run/diag_sleep", {"json": {"parameters": {"seconds": "soon"}}}, 422, "parameters.seconds"),
        ("post", "/run/diag_sleep", {"json": {"parameters": {"seconds": 1, "extra": 1}}}, 422, "parameters.extra"),
        ("get", "/status/not-a-task", {}, 404, "No task"),
        ("get", "/status/..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
        ("get", "/output/00000000-0000-7000-8000-000000000000", {}, 404, "No task"),
        ("post", "/stop/00000000-0000-7000-8000-000000000000", {}, 404, "No task"),
        ("get", "/logs/%2e%2e", {}, 404, ""),
        ("get", "/status/00000000-0000-7000-8000-000000000000", {"params": {"wait": 61}}, 422, "wait"),
        ("get", "/tasks", {"params": {"cursor": "../x"}}, 400, "cursor"),
        ("get", "/tasks", {"params": {"status": "done"}}, 422, "status"),
        ("get", "/tasks", {"params": {"limit": 0}}, 422, "limit"),
        ("post", "/cleanup/schedule", {"json": {"hour": 25}}, 422, "hour"),
        ("post", "/cleanup/schedule", {"json": {"hour": 2, "timezone": "Mars/Olympus"}}, 422, "time zone"),
        ("post", "/cleanup/schedule", {"json": {}}, 422, "interval_seconds"),
        ("get", "/nowhere", {}, 404, "No such endpoint"),
        ("delete", "/tasks", {}, 405, "not allowed"),
    ],
)
def test_bad_input_gets_a_clear_4xx(server: Server, method, path, kwargs, code, words):
    response = getattr(server.client, method)(path, **kwargs)
    assert response.status_code == code, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert words in body["detail"]
    assert "Traceback" not in response.text


def test_parameter_errors_list_field_paths(server: Server):
    response = server.client.post("/run/diag_sleep", json={"parameters": {"seconds": -1, "mode": "x"}})
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"parameters.seconds", "parameters.mode"}


def test_body_over_the_limit_is_413(server: Server):
    big = b'{"parameters": {"x": "' + b"a" * (11 * 1024 * 1024) + b'"}}'
    response = server.client.post("/run/diag_noop", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_output_of_a_running_task_is_409_and_long_poll_returns_on_change(server: Server):
    task = server.run("diag_sleep", seconds=1.5)
    response = server.client.get(f"/output/{task['task_id']}")
    assert response.status_code == 409 and response.json()["status"] in ("queued", "running")
    before = server.status(task["task_id"])
    started = time.monotonic()
    changed = server.client.get(f"/status/{task['task_id']}", params={"wait": 30}).json()
    assert time.monotonic() - started < 5
    assert (changed["status"], changed["progress"]) != (before["status"], before["progress"])
    server.wait_for(task["task_id"])
    assert server.client.post(f"/stop/{task['task_id']}").status_code == 409


def test_idempotency_key_returns_the_same_task(server: Server):
    headers = {"Idempotency-Key": f"nightly-{time.time()}"}
    first = server.client.post("/run/diag_noop", json={"parameters": {"a": 1}}, headers=headers)
    again = server.client.post("/run/diag_noop", json={"parameters": {"a": 1}}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = server.client.post("/run/diag_noop", json={"parameters": {"a": 2}}, headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]


def test_tasks_list_filters_and_pages(server: Server):
    ids = [server.run("diag_noop", i=i)["task_id"] for i in range(5)]
    for task_id in ids:
        server.wait_for(task_id)
    first = server.client.get("/tasks", params={"step": "diag_noop", "limit": 3}).json()
    assert first["count"] == 3 and first["next_cursor"]
    assert [t["task_id"] for t in first["tasks"]] == ids[::-1][:3]
    second = server.client.get("/tasks", params={"step": "diag_noop", "limit": 3, "cursor": first["next_cursor"]}).json()
    assert [t["task_id"] for t in second["tasks"]][:2] == ids[::-1][3:5]
    failed = server.client.get("/tasks", params={"status": "failed"}).json()
    assert all(t["status"] == "failed" for t in failed["tasks"])


def test_steps_catalogue_has_schemas(server: Server):
    steps = {s["name"]: s for s in server.client.get("/steps").json()["steps"]}
    assert {"diag_noop", "diag_sleep", "diag_fail"} <= set(steps)
    assert steps["diag_sleep"]["parameters"]["properties"]["seconds"]["type"] == "number"
    assert server.client.get("/steps/diag_sleep").json()["name"] == "diag_sleep"


def test_health_stats_metrics_and_livez(server: Server):
    assert server.client.get("/livez").json() == {"status": "ok"}
    health = server.client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert set(health.json()["checks"]) >= {"storage_writable", "cache_readable", "disk_free", "cleanup_scheduler"}
    assert str(server.storage) not in health.text
    stats = server.client.get("/stats").json()
    assert stats["capacity"]["max_concurrent_tasks"] == 25
    # Scale-out mode also lists the worker hosts' pool processes (role "worker").
    assert sum(1 for w in stats["workers"] if w["alive"] and w.get("role") != "worker") == 4
    assert stats["tasks"]["by_status"]["completed"] >= 1
    assert sum(hour["completed"] for hour in stats["tasks_per_hour"]) >= 1  # the dashboard's chart
    assert stats["queue_wait_seconds"]["step"]["diag_noop"]["started"] >= 1
    metrics = server.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE etl_tasks_submitted_total counter" in metrics.text
    assert 'etl_tasks_submitted_total{step="diag_noop"}' in metrics.text


def test_security_headers(server: Server):
    response = server.client.get("/livez")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


def test_cleanup_schedule_forms_and_cleanup_now(server: Server):
    daily = server.client.post("/cleanup/schedule", json={"hour": 3, "minute": 30, "timezone": "America/Sao_Paulo"})
    assert daily.status_code == 200, daily.text
    assert daily.json()["mode"] == "daily" and daily.json()["next_run"]
    interval = server.client.post("/cleanup/schedule", json={"interval_seconds": 600}).json()
    assert interval["mode"] == "interval" and interval["interval_seconds"] == 600
    described = server.client.get("/cleanup/schedule").json()
    assert described["ttl_hours"] == 24
    now = server.client.post("/cleanup/now")
    assert now.status_code == 200 and now.json()["removed"] == 0


def test_api_keys_and_roles(make_server):
    srv: Server = make_server(workers=1, api_keys="viewer:v-key,operator:ops:o-key,admin:a-key",
                              probe_headers={"X-API-Key": "v-key"})
    anon = httpx.Client(base_url=srv.url)
    assert anon.get("/livez").status_code == 200
    assert anon.get("/health").status_code == 200
    assert srv.client.get("/tasks").status_code == 401
    assert srv.client.get("/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401
    viewer = {"Authorization": "Bearer v-key"}
    operator = {"X-API-Key": "o-key"}
    assert srv.client.get("/tasks", headers=viewer).status_code == 200
    denied = srv.client.post("/run/diag_noop", headers=viewer)
    assert denied.status_code == 403 and "operator" in denied.json()["detail"]
    task = srv.client.post("/run/diag_noop", headers=operator).json()
    assert srv.client.post("/cleanup/now", headers=operator).status_code == 403
    assert srv.client.post("/cleanup/now", headers={"X-API-Key": "a-key"}).status_code == 200
    status = srv.client.get(f"/status/{task['task_id']}", headers=viewer).json()
    assert status["requested_by"]["role"] == "operator" and status["requested_by"]["name"] == "ops"
    assert "o-key" not in srv.task_file(task["task_id"])


def test_capacity_changes_at_run_time_only_in_scale_out_mode(server: Server):
    response = server.client.post("/capacity", json={"max_concurrent_tasks": 7})
    if server.env.get("ETL_BACKEND") == "celery":
        assert response.status_code == 200 and response.json() == {"max_concurrent_tasks": 7}
        assert server.client.get("/stats").json()["capacity"]["max_concurrent_tasks"] == 7
        server.client.post("/capacity", json={"max_concurrent_tasks": 25})
    else:
        assert response.status_code == 409 and "ETL_BACKEND=celery" in response.json()["detail"]
    assert server.client.post("/capacity", json={"max_concurrent_tasks": "many"}).status_code == 422


def test_orchestration_verbs_work_in_both_modes(server: Server):
    """Schedules, concurrency keys and dead letters have a side in each store (Redis in scale-out mode)."""
    schedule = {"id": "nightly-api-test", "step": "diag_noop", "cron": "0 3 * * *", "timezone": "UTC"}
    created = server.client.post("/schedules", json=schedule)
    assert created.status_code == 201, created.text
    assert created.json()["next_runs"][0].endswith("T03:00:00+00:00")
    assert server.client.post("/schedules", json=schedule).status_code == 409, "the id is taken"
    assert server.client.post("/schedules/nightly-api-test/pause").json()["paused"] is True
    assert "nightly-api-test" in {s["id"] for s in server.client.get("/schedules").json()["schedules"]}
    assert server.client.get("/schedules/nightly-api-test/runs").json()["runs"] == []
    assert server.client.delete("/schedules/nightly-api-test").status_code == 204
    assert server.client.get("/schedules/nightly-api-test").status_code == 404
    limit = server.client.put("/keys/portal-api-test", json={"limit": 2})
    assert limit.status_code == 200, limit.text
    assert server.client.get("/keys").json()["keys"]["portal-api-test"]["limit"] == 2
    assert server.client.put("/keys/portal-api-test", json={"limit": None}).status_code == 200
    assert "portal-api-test" not in server.client.get("/keys").json()["keys"]
    failed = server.run("diag_fail", message="for the dead letters")
    assert server.wait_for(failed["task_id"])["status"] == "failed"
    dead = {d["task_id"] for d in server.client.get("/dead-letters").json()["dead_letters"]}
    assert failed["task_id"] in dead
    assert server.client.post(f"/dead-letters/{failed['task_id']}/dismiss").status_code == 200


def test_a_step_runs_once_and_only_where_steps_run(server: Server):
    """Locally in an API worker's thread; in scale-out mode on a worker host only, never also in the
    API process that admitted it (each place counts the step's calls in its own work folder)."""
    key = f"once-{time.time_ns()}"
    task = server.run("diag_flaky", key=key, failures=0, seconds=0.3)
    assert server.wait_for(task["task_id"])["output"] == {"calls": 1}
    time.sleep(0.5)
    counter = server.storage / "runs" / "diag_flaky" / f"{key}.count"
    if server.env.get("ETL_BACKEND") == "celery":
        assert not counter.exists(), "the API process ran the step as well"
    else:
        assert counter.stat().st_size == 1


def test_health_in_scale_out_mode_reports_redis_and_the_live_worker_hosts(server: Server):
    """Scale-out mode: /health names Redis and each live worker host; it fails when none is alive."""
    if not isinstance(server, CeleryServer):
        assert not {"redis", "worker_hosts"} & set(server.client.get("/health").json()["checks"])
        return
    checks = server.client.get("/health").json()["checks"]
    assert checks["redis"]["ok"] and "Redis answered" in checks["redis"]["detail"]
    assert checks["worker_hosts"] == {"ok": True, "detail": "1 worker host(s) alive: host1 (4 processes)"}
    second = WorkerHost(server.storage.parent / "worker-host2", server.redis.url, 1, "host2").start()
    try:
        deadline = time.monotonic() + 60
        while "host2" not in server.client.get("/health").json()["checks"]["worker_hosts"]["detail"]:
            assert time.monotonic() < deadline, "the second worker host never showed in /health"
            time.sleep(0.2)
        assert server.client.get("/health").json()["checks"]["worker_hosts"]["detail"] == \
            "2 worker host(s) alive: host1 (4 processes), host2 (1 process)"
    finally:
        second.stop()
    server.host.stop()
    try:
        deadline = time.monotonic() + 30
        while (health := server.client.get("/health")).status_code == 200:
            assert time.monotonic() < deadline, "health stayed 200 with no worker host alive"
            time.sleep(0.2)
        assert "worker_hosts" in health.json()["failing"] and "no Celery worker host" in health.text
    finally:
        server.host.start()
        server.worker_hosts_ready()
    assert server.client.get("/health").status_code == 200
    # Redis away: /health says so (503, never 500), and is healthy again once it is back.
    redis.Redis.from_url(server.redis.url).shutdown(save=True)  # a snapshot, loaded again at start
    server.redis.stop()
    try:
        health = server.client.get("/health")
        assert health.status_code == 503 and "redis" in health.json()["failing"], health.text
        assert "cannot be reached" in health.json()["checks"]["redis"]["detail"]
    finally:
        server.redis.start()
    deadline = time.monotonic() + 30
    while server.client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, server.client.get("/health").text
        time.sleep(0.2)
