"""Keys and roles, secrets and masking, audit, rate limiting, metrics across workers, failing health."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from etl import secrets
from tests.scaleout import BACKENDS, CeleryServer
from tests.server import ROOT, Server

SECRET = "s3cr3t-Pa55word-value"


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_role_on_each_endpoint_class(make_server, backend):
    srv: Server = make_server(backend=backend, workers=2, api_keys="viewer:v-key,operator:o-key,admin:adm:a-key",
                              probe_headers={"X-API-Key": "v-key"})
    keys = {"none": {}, "viewer": {"X-API-Key": "v-key"}, "operator": {"Authorization": "Bearer o-key"},
            "admin": {"X-API-Key": "a-key"}}
    matrix = httpx.Client(base_url=srv.url)
    srv.client.headers.update(keys["viewer"])
    task_id = matrix.post("/run/diag_noop", headers=keys["operator"]).json()["task_id"]
    srv.wait_for(task_id)
    endpoints = {
        "viewer": [("get", f"/status/{task_id}"), ("get", f"/output/{task_id}"), ("get", f"/logs/{task_id}"),
                   ("get", "/tasks"), ("get", "/steps"), ("get", "/stats"), ("get", "/metrics"),
                   ("get", "/cleanup/schedule")],
        "operator": [("post", "/run/diag_noop"), ("post", f"/stop/{task_id}")],
        "admin": [("post", "/cleanup/now")],
    }
    rank = {"none": -1, "viewer": 0, "operator": 1, "admin": 2}
    for needed, calls in endpoints.items():
        for method, path in calls:
            for who, headers in keys.items():
                code = getattr(matrix, method)(path, headers=headers).status_code
                if who == "none":
                    assert code == 401, (who, path, code)
                elif rank[who] < rank[needed]:
                    assert code == 403, (who, path, code)
                else:
                    assert code in (200, 202, 409), (who, path, code)
    for path in ("/livez", "/health"):
        assert matrix.get(path).status_code == 200
    audit = [json.loads(line) for line in (srv.storage / "audit.log").read_text().splitlines()]
    assert {"run", "stop", "cleanup", "denied"} <= {entry["action"] for entry in audit}
    assert all("a-key" not in json.dumps(entry) and "o-key" not in json.dumps(entry) for entry in audit)
    assert any(entry["action"] == "cleanup" and entry["key_name"] == "adm" for entry in audit)
    openapi = matrix.get("/openapi.json").json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(openapi["components"]["securitySchemes"])


def test_hashed_keys_in_a_keys_file(make_server, tmp_path):
    digest = __import__("hashlib").sha256(b"file-key").hexdigest()
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# operators\noperator:nightly:sha256:{digest}\n", encoding="utf-8")
    srv: Server = make_server(workers=1, api_keys_file=keys_file, probe_headers={"X-API-Key": "file-key"})
    assert srv.client.post("/run/diag_noop", headers={"X-API-Key": "file-key"}).status_code == 202
    assert srv.client.post("/run/diag_noop", headers={"X-API-Key": digest}).status_code == 401


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_secret_is_masked_everywhere(make_server, backend):
    srv: Server = make_server(backend=backend, workers=1, secret_dbpass=SECRET)  # ETL_SECRET_DBPASS
    failing = srv.run("diag_fail", message="cannot log in with", credential="${secret:dbpass}")
    final = srv.wait_for(failing["task_id"])
    assert final["status"] == "failed" and "***" in final["error"]["message"]
    echoed = srv.run("diag_noop", credential="${secret:dbpass}", password="typed-in-clear")
    srv.wait_for(echoed["task_id"])
    echo_file = json.loads(srv.task_file(echoed["task_id"]))
    assert echo_file["params"]["password"] == "***"  # a secret-named parameter; the step's own result is its own
    places = {
        "status": srv.client.get(f"/status/{failing['task_id']}").text,
        "output": srv.client.get(f"/output/{failing['task_id']}").text,
        "echo output": srv.client.get(f"/output/{echoed['task_id']}").text,
        "task logs": srv.client.get(f"/logs/{failing['task_id']}").text,
        "task file": srv.task_file(failing["task_id"]),
        "echo params": json.dumps(echo_file["params"]),
        "server log": srv.log_text(),
        "audit": (srv.storage / "audit.log").read_text(encoding="utf-8"),
    }
    if isinstance(srv, CeleryServer):
        # The step ran on the worker host: its log went to Redis (GET /logs), and that host logs too.
        places["log file"] = "\n".join(srv.client.get(f"/logs/{failing['task_id']}").json()["lines"])
        places["worker host log"] = srv.host.log_text()
    else:
        places["log file"] = (srv.storage / "logs" / f"{failing['task_id']}.log").read_text(encoding="utf-8")
    for where, text in places.items():
        assert SECRET not in text, where
        if where != "echo output":
            assert "typed-in-clear" not in text, where
    assert "***" in places["log file"] and "${secret:dbpass}" in places["task file"]


def test_encrypted_secrets_file(tmp_path, monkeypatch):
    key = base64.b64encode(os.urandom(32)).decode()
    path = tmp_path / "secrets.json"
    env = {**os.environ, "ETL_SECRETS_FILE": str(path), "ETL_SECRETS_KEY": key}
    subprocess.run([sys.executable, "-m", "etl.secrets", "set", "portal"], input="hunter2\n", text=True, env=env,
                   cwd=ROOT, check=True, capture_output=True)
    assert b"hunter2" not in path.read_bytes()
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)  # readable by its owner only
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temp file left behind
    monkeypatch.setenv("ETL_SECRETS_FILE", str(path))
    monkeypatch.setenv("ETL_SECRETS_KEY", key)
    assert secrets.resolve({"url": "https://x/?p=${secret:portal}"}) == {"url": "https://x/?p=hunter2"}
    assert secrets.mask_text("password hunter2 used") == "password *** used"
    new_key = base64.b64encode(os.urandom(32)).decode()
    subprocess.run([sys.executable, "-m", "etl.secrets", "rotate"], env={**env, "ETL_SECRETS_NEW_KEY": new_key},
                   cwd=ROOT, check=True, capture_output=True)
    with pytest.raises(secrets.SecretError, match="cannot be decrypted"):
        secrets.lookup("portal")
    monkeypatch.setenv("ETL_SECRETS_KEY", new_key)
    assert secrets.lookup("portal") == "hunter2"
    with pytest.raises(secrets.SecretError, match="not in"):
        secrets.lookup("missing")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_limit_per_key(make_server, backend):
    srv: Server = make_server(backend=backend, workers=2, rate_limit_per_minute=3)
    codes = [srv.client.post("/run/diag_noop").status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    limited = srv.client.post("/run/diag_noop")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "per minute" in limited.json()["detail"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_are_the_same_sum_on_every_worker(make_server, backend):
    srv: Server = make_server(backend=backend, workers=4)
    for _ in range(20):
        with httpx.Client(base_url=srv.url) as fresh:
            assert fresh.post("/run/diag_noop").status_code == 202
    time.sleep(1)
    seen = set()
    workers = set()
    for _ in range(12):
        with httpx.Client(base_url=srv.url) as fresh:
            text = fresh.get("/metrics").text
            seen.add(next(line for line in text.splitlines() if line.startswith('etl_tasks_submitted_total{step="diag_noop"}')))
            workers.add(fresh.get("/stats").json()["capacity"]["running"])
    assert seen == {'etl_tasks_submitted_total{step="diag_noop"} 20'}
    stats = srv.client.get("/stats").json()
    assert sum(stats["tasks_started_per_worker"].values()) == 20
    if isinstance(srv, CeleryServer):
        # Counted in one place for the worker host's pool processes, which Celery hands messages to
        # as they come free (20 no-ops may all go to one of them).
        pids = {int(worker.rsplit(":", 1)[1]) for worker in stats["tasks_started_per_worker"]}
        assert pids <= set(srv.host.pool_pids()), (pids, srv.host.pool_pids())
    else:
        assert len(stats["tasks_started_per_worker"]) >= 2  # spread over workers, counted in one place


def test_health_names_each_failing_check(make_server, tmp_path):
    srv: Server = make_server(workers=1, min_free_disk_mb=10**9)
    health = srv.client.get("/health")
    assert health.status_code == 503 and health.json()["failing"] == ["disk_free"]
    srv.stop()

    storage = tmp_path / "second"
    srv = make_server(storage, workers=1)
    (worker,) = srv.worker_pids()
    (storage / f".health-{worker}").mkdir()  # the probe file cannot be created: storage not writable
    health = srv.client.get("/health")
    assert health.status_code == 503 and health.json()["failing"] == ["storage_writable"]
    srv.stop()

    srv = make_server(tmp_path / "third", workers=2, task_timeout_seconds=1, stop_grace_seconds=1)
    task = srv.run("diag_sleep", seconds=60)
    owner = srv.status(task["task_id"])["worker"]["pid"]
    os.kill(owner, signal.SIGSTOP)  # a hung worker: alive, silent, enforcing nothing
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with httpx.Client(base_url=srv.url, timeout=2) as fresh:
                try:
                    answer = fresh.get("/health")
                except httpx.TimeoutException:
                    continue
                if "stuck_tasks" in answer.json().get("failing", []):
                    break
            time.sleep(0.3)
        assert answer.status_code == 503 and "stuck_tasks" in answer.json()["failing"]
        assert task["task_id"] in answer.json()["checks"]["stuck_tasks"]["detail"]
    finally:
        os.kill(owner, signal.SIGCONT)


def test_health_fails_when_cleanup_is_overdue_or_the_cache_cannot_be_read(make_server, tmp_path):
    from api.store.keys import K_CLEANUP
    from api.scheduler import LEASE, LEASE_SECONDS
    from api.store import TaskStore

    storage = tmp_path / "task_storage"
    srv: Server = make_server(storage, workers=2, cache_timeout_seconds=1)
    assert srv.client.get("/health").status_code == 200
    store = TaskStore(storage, storage / "runs", storage / "outputs", ttl_seconds=3600, max_running=4,
                      max_queued=10, worker_lost_after_seconds=3)
    store.open()
    try:
        # another owner holds the cleanup lease and the next run is long past: nobody can clean up
        assert store.acquire_lease(LEASE, "a-stuck-cleaner", 3600)
        store.set_cleanup_next(time.time() - LEASE_SECONDS - 120)
        health = srv.client.get("/health")
        assert health.status_code == 503 and health.json()["failing"] == ["cleanup_scheduler"]
        assert "overdue" in health.json()["checks"]["cleanup_scheduler"]["detail"]
    finally:
        store.release_lease(LEASE, "a-stuck-cleaner")
        store.set_cleanup_next(time.time() + 3600)
        store.close()
    assert srv.client.get("/health").status_code == 200

    import pickle
    import sqlite3

    # a row the JSON-only cache refuses to read (pickled, as an attacker would plant it)
    db = sqlite3.connect(storage / "task_cache" / "cache.db", timeout=10)
    db.execute("UPDATE Cache SET mode = 4, value = ? WHERE key = ?",
               (sqlite3.Binary(pickle.dumps({"x": 1})), K_CLEANUP + "next"))
    db.commit()
    try:
        health = srv.client.get("/health")
        assert health.status_code == 503 and "cache_readable" in health.json()["failing"], health.json()
        assert "task cache cannot be read" in health.json()["checks"]["cache_readable"]["detail"]
    finally:
        db.execute("DELETE FROM Cache WHERE key = ?", (K_CLEANUP + "next",))
        db.commit()
        db.close()
    deadline = time.monotonic() + 10
    while srv.client.get("/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert srv.client.get("/health").status_code == 200
