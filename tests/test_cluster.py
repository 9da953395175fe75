"""The cross-worker rules, against a real Gunicorn with 4 workers."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from tests.server import Server


def _intervals_overlap_max(tasks: list[dict]) -> int:
    events = []
    for t in tasks:
        if t["started_at"]:
            events.append((t["started_at"], 1))
            events.append((t["completed_at"], -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end and a start at the same ms: end first
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_global_cap_queue_fifo_and_queue_full(make_server):
    srv: Server = make_server(max_concurrent_tasks=3, max_queued_tasks=20)

    # The first three tasks start on three different workers, so slots free on several workers and
    # the queued tasks show whichever worker frees a slot starts the next one (not only the acceptor).
    firsts = [
        srv.run("diag_sleep", client=client, seconds=3)
        for client in list(srv.clients_by_worker(3).values())[:3]
    ]

    def submit(i: int) -> httpx.Response:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            return client.post("/run/diag_sleep", json={"parameters": {"seconds": 3}})

    # The tasks outlast the burst of submits (even on a loaded machine), so no slot frees during it.
    started = time.monotonic()
    with ThreadPoolExecutor(27) as pool:
        responses = list(pool.map(submit, range(27)))
    took = time.monotonic() - started
    codes = sorted(r.status_code for r in responses)
    accepted = firsts + [r.json() for r in responses if r.status_code == 202]
    rejected = [r for r in responses if r.status_code == 429]
    assert len(accepted) == 23 and len(rejected) == 7, (codes, f"submits took {took:.2f} s")
    assert [a["status"] for a in firsts] == ["running"] * 3
    assert all(a["status"] == "queued" for a in accepted[3:])
    for r in rejected:
        assert int(r.headers["Retry-After"]) > 0
        assert "queue is full" in r.json()["detail"]

    ended = [srv.wait_for(a["task_id"], timeout=60) for a in accepted]
    finals = [srv.status(a["task_id"]) for a in accepted]
    assert {f["status"] for f in finals} == {"completed"}
    assert _intervals_overlap_max(finals) <= 3
    assert len({e["worker"]["pid"] for e in ended[:3]}) == 3
    queued_pids = {e["worker"]["pid"] for e in ended[3:]}
    assert len(queued_pids) >= 2, "queued tasks are started by whichever worker frees a slot"

    # FIFO: no task that was queued later started strictly before one queued earlier.
    queued = [f for f in finals if "slot became free" in f["history"][1]["reason"]]
    assert len(queued) == 20
    for a in queued:
        for b in queued:
            if a["history"][0]["at"] < b["history"][0]["at"]:
                assert a["started_at"] <= b["started_at"], (a["task_id"], b["task_id"])

    stats = srv.client.get("/stats").json()
    assert stats["capacity"]["running"] == 0 and stats["capacity"]["queued"] == 0
    assert stats["tasks"]["by_status"]["completed"] >= 23


def test_cross_worker_stop_is_fast(server: Server):
    clients = server.clients_by_worker(2)
    (owner_pid, owner), (other_pid, other) = list(clients.items())[:2]
    task = server.run("diag_sleep", client=owner, seconds=60)
    assert server.status(task["task_id"])["worker"]["pid"] == owner_pid
    started = time.monotonic()
    response = other.post(f"/stop/{task['task_id']}")
    assert response.status_code == 202, response.text
    assert response.json()["received_by"]["pid"] == other_pid
    final = server.wait_for(task["task_id"], timeout=5)
    latency = time.monotonic() - started
    assert final["status"] == "stopped"
    assert latency < 1.0, latency
    assert final["stopped_by"]["role"] == "admin"
    assert [h["status"] for h in final["history"]] == ["queued", "running", "running", "stopped"]
    # Stopping again is idempotent: 200 once stopped.
    again = other.post(f"/stop/{task['task_id']}")
    assert again.status_code == 200 and again.json()["status"] == "stopped"
    for client in clients.values():
        client.close()


def test_stop_kills_the_whole_process_tree(server: Server):
    task = server.run("diag_sleep", seconds=120, mode="subprocess")
    task_id = task["task_id"]
    deadline = time.monotonic() + 15
    pids: list[int] = []
    while time.monotonic() < deadline and not pids:
        lines = server.client.get(f"/logs/{task_id}").json()["lines"]
        for line in lines:
            if m := re.search(r"child pid=(\d+) grandchild pid=(\d+)", line):
                pids = [int(m.group(1)), int(m.group(2))]
        time.sleep(0.05)
    assert pids, "the step never logged its process tree"
    assert all(psutil.pid_exists(p) for p in pids)
    assert server.client.post(f"/stop/{task_id}").status_code == 202
    final = server.wait_for(task_id, timeout=5)
    assert final["status"] == "stopped"

    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 3
    while not all(dead(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(dead(p) for p in pids), "child or grandchild survived the stop"


def test_queued_task_stops_at_once_and_ignoring_step_is_abandoned(make_server):
    srv: Server = make_server(max_concurrent_tasks=1, max_queued_tasks=5, stop_grace_seconds=2)
    stubborn = srv.run("diag_sleep", seconds=60, mode="ignore_stop")
    waiting = srv.run("diag_sleep", seconds=0.1)
    assert waiting["status"] == "queued"

    response = srv.client.post(f"/stop/{waiting['task_id']}")
    assert response.status_code == 200 and response.json()["status"] == "stopped"
    assert srv.status(waiting["task_id"])["history"][-1]["reason"] == "stop requested while queued"

    started = time.monotonic()
    assert srv.client.post(f"/stop/{stubborn['task_id']}").status_code == 202
    final = srv.wait_for(stubborn["task_id"], timeout=10)
    took = time.monotonic() - started
    assert final["status"] == "stopped"
    assert "abandoned" in final["message"]
    assert 1.5 < took < 5, took
    # The slot is free again: a new task runs at once.
    follow = srv.run("diag_noop")
    assert follow["status"] == "running"
    assert srv.wait_for(follow["task_id"])["status"] == "completed"


def test_kill_9_marks_task_worker_lost_and_frees_slot(make_server):
    srv: Server = make_server(max_concurrent_tasks=1, max_queued_tasks=5)
    task = srv.run("diag_sleep", seconds=60)
    pid = srv.status(task["task_id"])["worker"]["pid"]
    nxt = srv.run("diag_sleep", seconds=0.1)
    assert nxt["status"] == "queued"
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    final = srv.wait_for(task["task_id"], timeout=10)
    detected = time.monotonic() - killed
    assert final["status"] == "failed"
    assert final["error"]["type"] == "WorkerLost"
    assert detected < 5, detected
    # The freed slot goes to the queued task.
    assert srv.wait_for(nxt["task_id"], timeout=10)["status"] == "completed"


def test_sigterm_records_interrupted_tasks_and_restart_keeps_them(make_server, tmp_path):
    storage = tmp_path / "task_storage"
    srv: Server = make_server(storage, max_concurrent_tasks=4)
    polite = srv.run("diag_sleep", seconds=120)
    stubborn = srv.run("diag_sleep", seconds=120, mode="ignore_stop")
    done = srv.run("diag_noop", note="ação")
    srv.wait_for(done["task_id"])
    queued_ids = []
    for _ in range(2):
        filler = srv.run("diag_sleep", seconds=120)
        if filler["status"] == "queued":
            queued_ids.append(filler["task_id"])
    srv.wait_for(polite["task_id"], {"running"})
    assert srv.stop() == 0

    records = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in storage.glob("*.json")}
    assert records[polite["task_id"]]["status"] == "stopped"
    assert "shut down" in records[polite["task_id"]]["history"][-1]["reason"]
    assert records[stubborn["task_id"]]["status"] == "failed"
    assert records[stubborn["task_id"]]["error"]["type"] == "WorkerLost"
    assert not [r for r in records.values() if r["status"] == "running"]

    # Restart on the same storage: every task is still there.
    again: Server = make_server(storage, max_concurrent_tasks=4)
    for task_id, record in records.items():
        assert again.status(task_id)["status"] in (record["status"], "running", "completed")
    assert again.status(done["task_id"])["output"] == {"note": "ação"}

    # Lose the cache: the next start rebuilds it from the JSON files.
    again.stop()
    import shutil

    shutil.rmtree(storage / "task_cache")
    third: Server = make_server(storage, max_concurrent_tasks=4)
    for task_id in records:
        assert third.client.get(f"/status/{task_id}").status_code == 200
    listed = third.client.get("/tasks", params={"limit": 100}).json()
    assert {t["task_id"] for t in listed["tasks"]} >= set(records)
    assert third.status(done["task_id"])["output"] == {"note": "ação"}


def test_cleanup_runs_on_one_worker_at_a_time_and_spares_live_tasks(make_server):
    srv: Server = make_server(task_ttl_hours=1 / 3600, cleanup_interval_seconds=0.2, max_concurrent_tasks=1)
    long = srv.run("diag_sleep", seconds=60)
    queued = srv.run("diag_sleep", seconds=1)
    ended = [srv.run("diag_fail", message="x")["task_id"] for _ in range(2)]
    for task_id in ended:
        srv.client.post(f"/stop/{task_id}")  # queued behind the long task: stopped at once
    time.sleep(1.0)
    stop_now = srv.run("diag_noop")  # queued too
    srv.client.post(f"/stop/{stop_now['task_id']}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not any((srv.storage / f"{t}.json").exists() for t in ended):
            break
        time.sleep(0.2)
    for task_id in ended:
        assert srv.client.get(f"/status/{task_id}").status_code == 404
        assert not (srv.storage / f"{task_id}.json").exists()
        assert not (srv.storage / "logs" / f"{task_id}.log").exists()
    assert srv.status(long["task_id"])["status"] == "running"
    assert srv.status(queued["task_id"])["status"] == "queued"

    deadline = time.monotonic() + 20
    while len(runs := srv.client.get("/cleanup/schedule").json()["recent_runs"]) < 10:
        assert time.monotonic() < deadline, runs
        time.sleep(0.2)
    spans = sorted((r["at"], r["ended_at"], r["worker"]) for r in runs)
    for (start_a, end_a, _), (start_b, _, _) in zip(spans, spans[1:]):
        assert end_a <= start_b, "two cleanup runs overlapped"


def test_json_file_is_always_valid_while_polled(server: Server):
    task = server.run("diag_sleep", seconds=3)
    path = server.storage / f"{task['task_id']}.json"
    reads = bad = 0
    statuses = set()
    stop = time.monotonic() + 6
    while time.monotonic() < stop:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            statuses.add(data["status"])
            reads += 1
            if data["status"] == "completed":
                break
        except FileNotFoundError:
            continue
        except json.JSONDecodeError:
            bad += 1
    assert bad == 0
    assert reads > 100
    assert statuses >= {"running", "completed"}


def test_worker_loss_detected_by_heartbeats_without_gunicorn(make_server):
    """Under `python -m api serve` (Uvicorn's own workers, as on Windows) no Gunicorn hook runs."""
    srv: Server = make_server(kind="uvicorn", workers=2, max_concurrent_tasks=1)
    task = srv.run("diag_sleep", seconds=60)
    pid = srv.status(task["task_id"])["worker"]["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    final = srv.wait_for(task["task_id"], timeout=15)
    detected = time.monotonic() - killed
    assert final["status"] == "failed" and final["error"]["type"] == "WorkerLost"
    assert detected < 5, detected
    follow = srv.run("diag_noop")
    assert srv.wait_for(follow["task_id"], timeout=10)["status"] == "completed"


def test_timeout_fails_the_task(make_server):
    srv: Server = make_server(workers=2, task_timeout_seconds=1, stop_grace_seconds=1)
    polite = srv.run("diag_sleep", seconds=30)
    stubborn = srv.run("diag_sleep", seconds=30, mode="ignore_stop")
    for task in (polite, stubborn):
        final = srv.wait_for(task["task_id"], timeout=10)
        assert final["status"] == "failed" and final["error"]["type"] == "Timeout", final
    assert "ignored the stop" in srv.status(stubborn["task_id"])["error"]["message"]
