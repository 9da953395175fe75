"""Scale-out mode against real parts: redis-server, Celery worker hosts (separate process groups,
each with its own storage folder) and a Gunicorn API with ETL_BACKEND=celery."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.scaleout import RedisServer, WorkerHost
from tests.server import Server

# Worker hosts are Linux only (fork, PR_SET_PDEATHSIG); redis-server is a test dependency (tests/run.sh).
pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="worker hosts run on Linux only")]

CAP = 4
LINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.redis = RedisServer(base / "redis").start()
        self.hosts = [WorkerHost(base / f"host{n}", self.redis.url, 4, f"host{n}").start() for n in (1, 2)]
        self.api = Server(base / "api", workers=2, backend="celery", redis_url=self.redis.url,
                          max_concurrent_tasks=CAP)
        self.api.start()
        self.wait_processes(2 + 8)

    def wait_processes(self, wanted: int, timeout: float = 60) -> None:
        """Until API processes and pool processes heartbeat (they all report to /stats)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.api.client.get("/stats").json()["workers"]
            if sum(1 for w in workers if w["alive"]) >= wanted:
                return
            time.sleep(0.2)
        raise AssertionError(f"only {workers} after {timeout} s")

    def stop(self) -> None:
        self.api.stop()
        for host in self.hosts:
            host.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("scaleout"))
    try:
        yield cluster
    finally:
        cluster.stop()


def _stamp(line: str) -> float:
    match = LINE_TIME.match(line)
    assert match, line
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def step_interval(api: Server, task_id: str) -> tuple[float, float]:
    """When the step itself started and ended, from its own log lines (written on the worker host)."""
    lines = api.client.get(f"/logs/{task_id}").json()["lines"]
    started = [line for line in lines if "sleeping" in line]
    ended = [line for line in lines if line.endswith(": completed")]
    assert len(started) == 1 and len(ended) == 1, lines
    return _stamp(started[0]), _stamp(ended[0])


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, change in events:
        now += change
        peak = max(peak, now)
    return peak


def test_round_trip_fail_and_logs(cluster: Cluster):
    api = cluster.api
    task = api.run("diag_noop", fund="Fundo Ação", code="00123")
    final = api.wait_for(task["task_id"])
    assert final["status"] == "completed" and final["output"] == {"fund": "Fundo Ação", "code": "00123"}
    assert final["worker"]["pid"] in cluster.hosts[0].pool_pids() + cluster.hosts[1].pool_pids()
    assert [h["reason"].split(" ")[0] for h in final["history"]] == ["accepted", "dispatched:", "the"]
    assert "; started on worker " in final["history"][1]["reason"]
    logs = api.client.get(f"/logs/{task['task_id']}").json()
    assert any("diag_noop started" in line for line in logs["lines"])
    # The API host writes the JSON file from Redis changes (the worker hosts have their own folders).
    assert '"Fundo Ação"' in api.task_file(task["task_id"])
    # A figure, not a limit: accepted -> completed as the store recorded it, 20 no-ops one after another.
    spans = []
    for _ in range(20):
        done = api.wait_for(api.run("diag_noop")["task_id"])
        spans.append(datetime.fromisoformat(done["completed_at"]).timestamp()
                     - datetime.fromisoformat(done["created_at"]).timestamp())
    print(f"celery mode no-op, accepted to completed: p50 {sorted(spans)[10] * 1000:.1f} ms")
    failed = api.wait_for(api.run("diag_fail", message="planned failure")["task_id"])
    assert failed["status"] == "failed" and failed["error"] == {"type": "DiagnosticFailure", "message": "planned failure"}
    output = api.client.get(f"/output/{failed['task_id']}").json()
    assert "Traceback" in output["error"]["traceback"]


def test_must_hold_1_global_cap_fifo_and_makespan(cluster: Cluster):
    """Cap 4 over two hosts with 8 slots: 20 x 2 s tasks never run more than 4 at once, start in submit order."""
    api = cluster.api
    began = time.time()
    ids = [api.run("diag_sleep", seconds=2)["task_id"] for _ in range(20)]
    finals = [api.wait_for(task_id, timeout=40) for task_id in ids]
    assert {f["status"] for f in finals} == {"completed"}
    intervals = [step_interval(api, task_id) for task_id in ids]
    assert most_at_once(intervals) <= CAP
    # Admission order: the fencing token of each dispatch comes from one Redis counter.
    tokens = [int(re.search(r"\(dispatch (\d+)\)", h["reason"]).group(1)) for f in finals for h in f["history"]
              if "started on worker" in h["reason"]]
    assert len(tokens) == 20 and tokens == sorted(tokens), tokens
    makespan = max(datetime.fromisoformat(f["completed_at"]).timestamp() for f in finals) - began
    print(f"makespan of 20 x 2 s at cap {CAP}: {makespan:.2f} s")
    assert makespan <= 10.5
    hosts = {f["worker"]["pid"] for f in finals}
    assert hosts & set(cluster.hosts[0].pool_pids()) and hosts & set(cluster.hosts[1].pool_pids())


def test_must_hold_2_cap_changes_at_run_time(cluster: Cluster):
    api = cluster.api
    assert api.client.post("/capacity", json={"max_concurrent_tasks": 2}).status_code == 200
    try:
        assert api.client.get("/stats").json()["capacity"]["max_concurrent_tasks"] == 2
        ids = [api.run("diag_sleep", seconds=1)["task_id"] for _ in range(6)]
        for task_id in ids:
            assert api.wait_for(task_id, timeout=30)["status"] == "completed"
        assert most_at_once([step_interval(api, task_id) for task_id in ids]) <= 2
    finally:
        api.client.post("/capacity", json={"max_concurrent_tasks": CAP})
    assert api.client.post("/capacity", json={"max_concurrent_tasks": 0}).status_code == 422


def _step_pids(api: Server, task_id: str, timeout: float = 20) -> list[int]:
    """The pids of the diag_sleep subprocess tree, from the task's log (the step prints them)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = api.client.get(f"/logs/{task_id}").json()["lines"]
        found = [re.search(r"child pid=(\d+) grandchild pid=(\d+)", line) for line in lines]
        pids = [int(p) for m in found if m for p in m.groups()]
        if pids:
            return pids
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_must_hold_3_stop_from_any_api_process_over_10_trials(cluster: Cluster):
    api = cluster.api
    took = []
    received_by: set[int] = set()
    for _ in range(10):
        task = api.run("diag_sleep", seconds=30, mode="subprocess")
        pids = _step_pids(api, task["task_id"])
        asked = time.monotonic()
        with httpx.Client(base_url=api.url, timeout=30) as fresh:  # a new connection: any API process
            answer = fresh.post(f"/stop/{task['task_id']}")
        assert answer.status_code == 202
        received_by.add(answer.json()["received_by"]["pid"])
        final = api.wait_for(task["task_id"], timeout=5)
        took.append(time.monotonic() - asked)
        assert final["status"] == "stopped"
        while _alive(pids) and time.monotonic() - asked < 1.0:
            time.sleep(0.02)
        assert not _alive(pids)
    print(f"stop to stopped, 10 trials: max {max(took):.3f} s, received by {len(received_by)} API process(es)")
    assert max(took) <= 1.0, took


def test_a_queued_or_dispatched_task_stopped_never_starts(cluster: Cluster):
    """Cap 10 over 8 busy slots: the 9th task is dispatched but no worker is free; stopped, its
    message later reaches a worker with a token that no longer holds, and nothing runs."""
    api = cluster.api
    assert api.client.post("/capacity", json={"max_concurrent_tasks": 10}).status_code == 200
    try:
        busy = [api.run("diag_sleep", seconds=5)["task_id"] for _ in range(8)]  # long enough to see all 8 busy
        deadline = time.monotonic() + 15
        while not all(api.status(i)["worker"] for i in busy):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dispatched = api.run("diag_noop")
        assert dispatched["status"] == "running" and api.status(dispatched["task_id"])["worker"] is None
        extra = [api.run("diag_noop")["task_id"] for _ in range(2)]
        queued = api.run("diag_noop")
        assert queued["status"] == "queued"
        for task in (dispatched, queued):
            answer = api.client.post(f"/stop/{task['task_id']}")
            assert answer.status_code == 200 and answer.json()["status"] == "stopped", answer.text
        for task_id in busy + extra:
            assert api.wait_for(task_id, timeout=20)["status"] == "completed"
        time.sleep(1.0)
        for task in (dispatched, queued):
            final = api.status(task["task_id"])
            assert final["status"] == "stopped" and final["worker"] is None
            assert not [h for h in final["history"] if "started on worker" in h["reason"]]
            assert api.client.get(f"/logs/{task['task_id']}").json()["lines"] == []
        logs = "".join(host.log_text() for host in cluster.hosts)
        assert f"task {dispatched['task_id']}: token" in logs and "no longer holds" in logs
    finally:
        api.client.post("/capacity", json={"max_concurrent_tasks": CAP})


def test_must_hold_4_killed_pool_process_leaves_no_orphan(cluster: Cluster):
    api = cluster.api
    task = api.run("diag_sleep", seconds=30, mode="subprocess")
    pids = _step_pids(api, task["task_id"])
    pool_pid = api.status(task["task_id"])["worker"]["pid"]
    killed = time.monotonic()
    os.kill(pool_pid, signal.SIGKILL)
    final = api.wait_for(task["task_id"], timeout=10)
    assert final["status"] == "failed" and final["error"]["type"] == "WorkerLost"
    assert time.monotonic() - killed <= 5.5
    while _alive(pids) and time.monotonic() - killed < 3:
        time.sleep(0.05)
    assert not _alive(pids), "the step's subprocesses outlived their pool process"
    # The host replaced its pool process and keeps serving.
    assert api.wait_for(api.run("diag_noop")["task_id"], timeout=20)["status"] == "completed"


def test_must_hold_4_killed_host_tasks_fail_as_worker_lost_and_the_rest_run_once(cluster: Cluster):
    api = cluster.api
    ids = [api.run("diag_sleep", seconds=4)["task_id"] for _ in range(8)]
    victim, survivor = cluster.hosts
    deadline = time.monotonic() + 15
    while True:
        running = [api.status(i) for i in ids[:CAP]]
        if all(s["worker"] for s in running):
            break
        assert time.monotonic() < deadline, running
        time.sleep(0.05)
    on_victim = [s["task_id"] for s in running if s["worker"]["pid"] in victim.pool_pids()]
    assert on_victim, "both hosts should have taken tasks"
    killed = time.monotonic()
    victim.kill_tree()
    for task_id in on_victim:
        final = api.wait_for(task_id, timeout=10)
        assert final["status"] == "failed" and final["error"]["type"] == "WorkerLost"
    assert time.monotonic() - killed <= 5.0 + 0.5  # the last poll may land just after
    survivors = set(survivor.pool_pids())
    for task_id in ids:
        final = api.wait_for(task_id, timeout=30)
        started = [h for h in final["history"] if "started on worker" in h["reason"]]
        assert len(started) == 1, final["history"]  # nothing runs twice
        if task_id not in on_victim:
            assert final["status"] == "completed" and final["worker"]["pid"] in survivors
    # A replacement host for the tests that follow.
    cluster.hosts[0] = WorkerHost(victim.folder.with_name("host3"), cluster.redis.url, 4, "host3").start()


def test_must_hold_5_paused_worker_cannot_overwrite_and_aborts(cluster: Cluster):
    api = cluster.api
    task = api.run("diag_sleep", seconds=6)
    state = api.wait_for(task["task_id"], statuses={"running"})
    deadline = time.monotonic() + 10
    while not state["worker"]:
        assert time.monotonic() < deadline
        state = api.status(task["task_id"])
    pid = state["worker"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        final = api.wait_for(task["task_id"], timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert final["status"] == "failed" and final["error"]["type"] == "WorkerLost"
    time.sleep(1.0)  # one renewal after SIGCONT: the worker learns it lost the task
    host_logs = "".join(host.log_text() for host in cluster.hosts)
    assert f"task {task['task_id']}: this worker no longer owns it; aborting the step" in host_logs
    time.sleep(6)  # past the step's own end: the terminal state stays as the reaper left it
    again = api.status(task["task_id"])
    assert again["status"] == "failed" and again["history"] == final["history"]


def test_must_hold_6_redis_restart_with_aof_loses_nothing_and_the_api_says_503(tmp_path: Path):
    base = tmp_path
    store = RedisServer(base / "redis", aof=True).start()
    host = WorkerHost(base / "host1", store.url, 4, "host1").start()
    api = Server(base / "api", workers=2, backend="celery", redis_url=store.url, max_concurrent_tasks=4)
    try:
        api.start()
        ids = [api.run("diag_sleep", seconds=14)["task_id"] for _ in range(6)]
        deadline = time.monotonic() + 20
        while not all(api.status(i)["worker"] for i in ids[:4]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)  # past one AOF fsync since the last state change
        store.stop(signal.SIGKILL)
        answers = set()
        down_until = time.monotonic() + 10
        while time.monotonic() < down_until:
            for method, path in (("get", f"/status/{ids[0]}"), ("post", "/run/diag_noop"), ("get", "/stats"),
                                 ("get", "/tasks"), ("get", f"/logs/{ids[0]}")):
                answers.add(getattr(api.client, method)(path).status_code)
            time.sleep(0.2)
        assert answers == {503}, answers
        store.start()
        for task_id in ids:
            final = api.wait_for(task_id, timeout=60)
            assert final["status"] == "completed", (final["error"], final["history"])
            assert len([h for h in final["history"] if "started on worker" in h["reason"]]) == 1
        workers = api.client.get("/stats").json()["workers"]
        assert sum(1 for w in workers if w["alive"] and w.get("role") == "worker") == 4
    finally:
        api.stop()
        host.stop()
        store.stop()


def _file_shows(path: Path, check, timeout: float) -> float:
    """Seconds until the JSON file satisfies ``check`` (AssertionError past ``timeout``)."""
    began = time.monotonic()
    while True:
        try:
            if check(json.loads(path.read_text(encoding="utf-8"))):
                return time.monotonic() - began
        except (FileNotFoundError, ValueError):
            pass
        assert time.monotonic() - began < timeout, f"{path} did not follow the change in {timeout} s"
        time.sleep(0.01)


def test_must_hold_7_and_9_files_follow_cleanup_reconciles_and_long_tasks_run_once(tmp_path: Path):
    """A short TTL and a broker visibility timeout far below the task's length, on one worker host."""
    store = RedisServer(tmp_path / "redis").start()
    host = WorkerHost(tmp_path / "host1", store.url, 2, "host1", broker_visibility_timeout_seconds=1).start()
    api = Server(tmp_path / "api", workers=2, backend="celery", redis_url=store.url, task_ttl_hours=0.001)
    try:
        api.start()
        # 7: a task running 4 x the visibility timeout executes exactly once.
        task = api.run("diag_sleep", seconds=4)
        path = api.storage / f"{task['task_id']}.json"
        state = api.wait_for(task["task_id"], statuses={"running"})
        while not state["worker"]:
            state = api.status(task["task_id"])
        # 9: the JSON file follows each change within a second.
        assert _file_shows(path, lambda d: d["worker"] is not None, 1.0) <= 1.0
        final = api.wait_for(task["task_id"], timeout=20)
        assert final["status"] == "completed"
        assert _file_shows(path, lambda d: d["status"] == "completed", 1.0) <= 1.0
        time.sleep(2.0)  # the visibility timeout passed twice more after the end
        assert host.log_text().count(f"task {task['task_id']}: step diag_sleep started") == 1
        assert len([h for h in final["history"] if "started on worker" in h["reason"]]) == 1
        # 9: TTL cleanup removes the Redis keys and the file (expiry is kept in whole seconds, rounded up).
        time.sleep(max(0.0, 4.8 - (time.time() - datetime.fromisoformat(final["completed_at"]).timestamp())))
        assert task["task_id"] in api.client.post("/cleanup/now").json()["task_ids"]
        client = redis.Redis.from_url(store.url, decode_responses=True)
        assert [key for key in client.scan_iter("{etl}:*") if task["task_id"] in key] == []
        assert not path.exists()
        assert api.client.get(f"/status/{task['task_id']}").status_code == 404
        # 9: a file whose task Redis does not know is marked at the next start and reported.
        stray = api.storage / "01a233b2-9e97-7486-9352-bd90d9fdb182.json"
        stray.write_text(json.dumps({"task_id": stray.stem, "step_name": "diag_noop", "status": "running",
                                     "created_at": "2026-12-01T10:00:00+00:00"}), encoding="utf-8")
        api.stop()
        api.start()
        assert json.loads(stray.read_text(encoding="utf-8"))["unknown_to_redis"]["detail"]
        warnings = api.client.get("/health").json()["warnings"]
        assert any(stray.name in warning for warning in warnings), warnings
        # SIGTERM on a worker host stops its running steps, records it, and the host exits.
        task = api.run("diag_sleep", seconds=30)
        while not api.status(task["task_id"])["worker"]:
            time.sleep(0.05)
        host.proc.send_signal(signal.SIGTERM)
        final = api.wait_for(task["task_id"], timeout=5)
        assert final["status"] == "stopped" and "worker host shut down" in final["message"]
        assert host.proc.wait(10) == 0
    finally:
        api.stop()
        host.stop()
        store.stop()


@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator:
    """The Redis store on a private redis-server, in this process (no worker: dispatches are recorded)."""
    from api.store.redis import RedisStore

    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(server.url, tmp_path / "st", tmp_path / "st" / "runs", tmp_path / "st" / "out",
                       ttl_seconds=3600, max_running=2, max_queued=2, worker_lost_after_seconds=3, lease_seconds=3)
    store.open()
    store.dispatched = []
    store.dispatch = lambda task_id, token: store.dispatched.append((task_id, token))
    yield store
    store.close()
    server.stop()


def _new(step: str = "diag_noop"):
    from api.task import Task, TaskStatus, new_task_id, now_iso

    return Task(task_id=new_task_id(), step_name=step, status=TaskStatus.QUEUED, created_at=now_iso())


def test_redis_store_admission_idempotency_rate_and_queue_limit(redis_store):
    from api.errors import Conflict, QueueFull, RateLimited
    from api.workers import WorkerInfo

    me = WorkerInfo.this_process()
    first, replayed = redis_store.submit(_new(), me, ("key-1", "request-a"))
    assert first.status.value == "running" and not replayed and len(redis_store.dispatched) == 1
    again, replayed = redis_store.submit(_new(), me, ("key-1", "request-a"))
    assert replayed and again.task_id == first.task_id and len(redis_store.dispatched) == 1
    with pytest.raises(Conflict):
        redis_store.submit(_new(), me, ("key-1", "request-b"))
    states = [redis_store.submit(_new("diag_sleep"), me, None)[0].status.value for _ in range(3)]
    assert states == ["running", "queued", "queued"]
    with pytest.raises(QueueFull):
        redis_store.submit(_new(), me, None)
    assert (redis_store.live_running(), redis_store.queued_count()) == (2, 2)
    redis_store.set_max_running(10)  # the live cap: the next admission sees it
    assert redis_store.claim_next() is not None and redis_store.claim_next() is not None
    assert redis_store.queued_count() == 0
    redis_store.submit(_new(), me, None, rate=("alice", 2))
    redis_store.submit(_new(), me, None, rate=("alice", 2))
    with pytest.raises(RateLimited):
        redis_store.submit(_new(), me, None, rate=("alice", 2))


def test_redis_store_fencing_listing_and_counters(redis_store):
    from api.task import TaskStatus
    from api.workers import WorkerInfo

    me = WorkerInfo.this_process()
    ids = [redis_store.submit(_new("diag_sleep" if n % 2 else "diag_noop"), me, None)[0].task_id for n in range(4)]
    task_id, token = redis_store.dispatched[0]
    worker = WorkerInfo(id=f"host:1:t{token}", host="host", pid=1)
    assert redis_store.claim(task_id, token, worker).worker["id"] == worker.id
    assert redis_store.claim(task_id, token, worker) is None  # a redelivered message
    assert redis_store.claim(*redis_store.dispatched[1][:1], "999", worker) is None  # a stale token
    assert redis_store.renew(task_id, worker.id) == "ok" and redis_store.renew(task_id, "someone") == "lost"
    redis_store.request_stop(task_id, None)
    assert redis_store.control([task_id], worker.id) == {task_id: "stop"}
    assert redis_store.finish(task_id, TaskStatus.COMPLETED, "done", owner="someone").status is TaskStatus.RUNNING
    assert redis_store.finish(task_id, TaskStatus.STOPPED, "stopped", owner=worker.id).status is TaskStatus.STOPPED
    assert redis_store.renew(task_id, worker.id) == "lost"
    assert redis_store.claim_next() is not None  # the slot it freed goes to the head of the queue
    assert redis_store.dispatched[-1][0] == ids[2]
    page, cursor = redis_store.list_tasks(status=None, step=None, limit=3, cursor=None)
    assert [t.task_id for t in page] == ids[::-1][:3] and cursor == ids[1]
    rest, cursor = redis_store.list_tasks(status=None, step=None, limit=3, cursor=cursor)
    assert [t.task_id for t in rest] == [ids[0]] and cursor is None
    sleeps, _ = redis_store.list_tasks(status=TaskStatus.QUEUED, step="diag_sleep", limit=10, cursor=None)
    assert [t.task_id for t in sleeps] == [ids[3]]
    counts = redis_store.counters()
    assert counts.by_status() == {"queued": 1, "running": 2, "completed": 0, "failed": 0, "stopped": 1}
    assert counts.data["submitted"] == {"diag_noop": 2, "diag_sleep": 2}
    assert counts.data["started_by"] == {"host:1": 1}
    assert redis_store.acquire_lease("cleanup", "a", 5) and not redis_store.acquire_lease("cleanup", "b", 5)
    redis_store.release_lease("cleanup", "a")
    assert redis_store.acquire_lease("cleanup", "b", 5)


def test_start_up_reconciles_the_task_files_once_per_start_not_once_per_api_process(tmp_path: Path):
    """The API host's start reconciles its files with Redis before its workers exist; they skip it."""
    store = RedisServer(tmp_path / "redis").start()
    api = Server(tmp_path / "api", workers=4, backend="celery", redis_url=store.url)
    stray = api.storage / "01a233b2-9e97-7486-9352-bd90d9fdb182.json"
    api.storage.mkdir(parents=True)
    stray.write_text(json.dumps({"task_id": stray.stem, "step_name": "diag_noop", "status": "running",
                                 "created_at": "2026-12-01T10:00:00+00:00"}), encoding="utf-8")
    reconciled = "describe tasks Redis does not know"
    try:
        api.start()
        assert api.log_text().count(reconciled) == 1, api.log_text()[-3000:]
        assert json.loads(stray.read_text(encoding="utf-8"))["unknown_to_redis"]["detail"]
        api.stop()
        api.start()  # every start reconciles again (another host's cleanup may have removed tasks)
        assert api.log_text().count(reconciled) == 2, api.log_text()[-3000:]
        assert any(stray.name in w for w in api.client.get("/health").json()["warnings"])
    finally:
        api.stop()
        store.stop()


def test_a_worker_host_removes_the_work_folders_of_tasks_cleanup_removed(tmp_path: Path):
    """TTL cleanup on the API host removes the Redis keys; the worker host that ran the step then
    removes the task's work folder (and keeps a running task's)."""
    store = RedisServer(tmp_path / "redis").start()
    host = WorkerHost(tmp_path / "host1", store.url, 2, "host1", cleanup_interval_seconds=1).start()
    api = Server(tmp_path / "api", workers=1, backend="celery", redis_url=store.url, task_ttl_hours=0.0005)
    try:
        api.start()
        ended, running = api.run("diag_noop")["task_id"], api.run("diag_sleep", seconds=30)["task_id"]
        final = api.wait_for(ended)
        # What a step leaves in its folder (runtime.work_dir()); the diagnostic steps write none.
        folders = {task_id: host.folder / "runs" / "tasks" / task_id for task_id in (ended, running)}
        for folder in folders.values():
            folder.mkdir(parents=True)
            (folder / "scratch.parquet").write_bytes(b"PAR1")
        time.sleep(max(0.0, 2.9 - (time.time() - datetime.fromisoformat(final["completed_at"]).timestamp())))
        assert ended in api.client.post("/cleanup/now").json()["task_ids"]
        deadline = time.monotonic() + 15
        while folders[ended].exists():
            assert time.monotonic() < deadline, "the worker host kept the folder of a removed task"
            time.sleep(0.1)
        assert (folders[running] / "scratch.parquet").exists()  # its task is still in Redis
        api.client.post(f"/stop/{running}")
    finally:
        api.stop()
        host.stop()
        store.stop()


def test_redis_store_stats_snapshot_answers_as_the_verbs(redis_store):
    """/stats reads everything in one round trip; each answer is the one the single verbs give."""
    from api.workers import WorkerInfo

    me = WorkerInfo.this_process()
    for n in range(4):
        redis_store.submit(_new("diag_sleep" if n % 2 else "diag_noop"), me, None)
    redis_store.heartbeat(me, role="api", running=0)
    redis_store.set_max_running(3)
    snap = redis_store.stats_snapshot()
    assert snap.counters().data == redis_store.counters().data
    assert (snap.live_running(), snap.queued_count()) == (redis_store.live_running(), redis_store.queued_count()) == (2, 2)
    assert snap.workers() == redis_store.workers() and snap.alive_workers() == redis_store.alive_workers() == {me.id}
    assert snap.max_running == redis_store.max_running == 3 and snap.max_queued == redis_store.max_queued
    assert snap.cleanup_state() == redis_store.cleanup_state()
    assert (snap.waiting_retries(), snap.dead_letter_count(), snap.running_pipelines()) == (
        redis_store.waiting_retries(), redis_store.dead_letter_count(), redis_store.running_pipelines())
    assert snap.cache_size_bytes() > 0


def test_a_change_committed_elsewhere_wakes_this_process_s_waiters(redis_store, tmp_path: Path):
    """The change stream wakes a long-poll here for a change another process made (no polling
    involved: only the listener sets this process's watch event for it)."""
    import asyncio

    from api.store.redis import RedisStore
    from api.workers import WorkerInfo

    other = RedisStore(redis_store.url, tmp_path / "other", tmp_path / "other" / "runs", tmp_path / "other" / "out",
                       ttl_seconds=3600, max_running=2, max_queued=2, worker_lost_after_seconds=3, lease_seconds=3)
    other.open()
    redis_store.start_change_listener()
    try:
        task, _ = redis_store.submit(_new(), WorkerInfo.this_process(), None)
        token = redis_store.dispatched[-1][1]

        async def wait_for_the_claim() -> bool:
            with redis_store.watch.watch(task.task_id) as changed:
                while not redis_store._listener.following.is_set():
                    await asyncio.sleep(0.01)
                changed.clear()  # the listener's start wakes every waiter once
                worker = WorkerInfo(id="elsewhere:1:t1", host="elsewhere", pid=1)
                assert other.claim(task.task_id, token, worker) is not None  # not this store's commit
                await asyncio.wait_for(changed.wait(), 30)
                return True

        assert asyncio.run(wait_for_the_claim())
        assert redis_store.get(task.task_id).worker["host"] == "elsewhere"
    finally:
        redis_store.stop_change_listener()
        other.close()
