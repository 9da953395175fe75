"""Restart traps, storage faults and ownership (issue findings 4-8, 10, 13 and the store's reading-found defects).

In-process tests use the real store on a real diskcache; the rest run real servers.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from api.errors import StorageUnavailable
from api.store import TaskStore
from api.store.cachedb import open_cache
from api.store.cleanup import LeaseLost
from api.store.keys import K_META
from api.task import Task, TaskStatus, new_task_id, now_iso
from api.workers import WorkerInfo
from tests.server import Server

ME = WorkerInfo(id="host:1:aaaaaa", host="host", pid=1)


def _task(step: str = "diag_noop", **params) -> Task:
    return Task(task_id=new_task_id(), step_name=step, status=TaskStatus.QUEUED, created_at=now_iso(), params=params)


def _new_store(root: Path, **kwargs) -> TaskStore:
    options = {"ttl_seconds": 3600, "max_running": 4, "max_queued": 10, "worker_lost_after_seconds": 3}
    store = TaskStore(root, root / "runs", root / "outputs", **{**options, **kwargs})
    store.open()
    return store


# --- 4: a rebuild claim left by a killed process ------------------------------------------


def test_4_a_rebuild_claim_of_a_dead_process_expires_and_the_next_start_rebuilds(tmp_path):
    """Before: the claim had no expiry; every later start waited 300 s and exited."""
    store = _new_store(tmp_path / "s")
    write = _new_store(tmp_path / "s2")
    task, _ = write.submit(_task(), ME, None)
    write.close()
    shutil.copy(tmp_path / "s2" / f"{task.task_id}.json", tmp_path / "s")
    with store._transaction():  # what a process killed in the middle of a rebuild leaves behind
        store.cache.set(K_META + "rebuild", {"owner": "startup-killed", "at": time.time() - 600})
    started = time.monotonic()
    store.ensure_index("next-start", wait_seconds=30)
    assert time.monotonic() - started < 5
    assert store.get(task.task_id).task_id == task.task_id
    store.close()


def test_4_a_live_rebuild_claim_is_waited_for_then_taken_over_once_it_lapses(tmp_path):
    store = _new_store(tmp_path / "s")
    with store._transaction():  # a claim that is still fresh (its owner stops renewing it now)
        store.cache.set(K_META + "rebuild", {"owner": "other", "at": time.time(), "expires": time.time() + 1.5})
    store.ensure_index("me", wait_seconds=30)
    assert store.is_initialized()
    store.close()


# --- 5: bad task files -------------------------------------------------------------------


BAD_FILES = {"list": [], "null": None, "text": "x", "number": 5}


def _valid_record(task_id: str, **changes) -> dict:
    record = _task().to_dict()
    record.update(task_id=task_id, status="completed", completed_at=now_iso(), expires_at=now_iso(time.time() + 3600))
    record.update(changes)
    return record


def test_5_bad_task_files_are_skipped_and_reported_and_the_server_starts(make_server, tmp_path):
    """Before: [], null, "x", 5 or expires_at: 12 made the start exit 1; worker: "x" gave a 500."""
    storage = tmp_path / "task_storage"
    storage.mkdir()
    good = new_task_id()
    (storage / f"{good}.json").write_text(json.dumps(_valid_record(good)), encoding="utf-8")
    bad_ids = []
    for value in [*BAD_FILES.values(), "EXPIRES", "WORKER", "WORKER_NO_ID", "ERROR_NO_TYPE", "HISTORY"]:
        task_id = new_task_id()
        bad_ids.append(task_id)
        if value == "EXPIRES":
            value = _valid_record(task_id, expires_at=12)
        elif value == "WORKER":
            value = _valid_record(task_id, worker="x")
        elif value == "WORKER_NO_ID":  # a running task whose owner has no id broke the index build
            value = _valid_record(task_id, status="running", completed_at=None, expires_at=None,
                                  worker={"host": "h", "pid": 1})
        elif value == "ERROR_NO_TYPE":  # gave a 500 on every /tasks page holding it
            value = _valid_record(task_id, status="failed", error={"message": "x"})
        elif value == "HISTORY":
            value = _valid_record(task_id, history="not a list")
        (storage / f"{task_id}.json").write_text(json.dumps(value), encoding="utf-8")

    srv: Server = make_server(storage, workers=2)
    assert srv.status(good)["status"] == "completed"
    for task_id in bad_ids:
        assert srv.client.get(f"/status/{task_id}").status_code == 404
    health = srv.client.get("/health")
    assert health.status_code == 200
    warned = " ".join(health.json()["warnings"])
    assert all(f"{task_id}.json" in warned for task_id in bad_ids), warned
    log = srv.log_text()
    assert all(f"{task_id}.json" in log for task_id in bad_ids)


def test_5_a_file_with_a_wrong_field_type_is_named_in_the_reason():
    with pytest.raises(ValueError, match="worker"):
        Task.from_file(_valid_record(new_task_id(), worker="x"))
    with pytest.raises(ValueError, match="expires_at"):
        Task.from_file(_valid_record(new_task_id(), expires_at=12))
    with pytest.raises(ValueError, match="not a task object"):
        Task.from_file([])


# --- 6: a full disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs: a real file system that really fills up (needs root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler.bin"
    # Unbuffered: a buffered file keeps the bytes of the write that failed, and closing it tries
    # to write them again (an ENOSPC out of the `with`, seen once).
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_6_a_full_disk_gives_503s_every_accepted_task_ends_and_the_cache_is_never_set_aside(small_disk, tmp_path):
    """Before: an accepted task stayed running with no file, and a restart moved the cache aside and exited."""
    storage = small_disk / "task_storage"
    srv = Server(storage, workers=2, min_free_disk_mb=0)
    srv.log_path = tmp_path / "server.log"  # the server's own log must not be on the full disk
    try:
        _full_disk_scenario(srv, storage, small_disk)
    finally:
        srv.stop()


def _full_disk_scenario(srv: Server, storage: Path, small_disk: Path) -> None:
    srv.start()
    accepted = [srv.run("diag_noop")["task_id"]]
    filler = _fill(small_disk)
    answers = [srv.client.post("/run/diag_sleep", json={"parameters": {"seconds": 0.2}}) for _ in range(5)]
    assert {a.status_code for a in answers} <= {202, 503}, [a.text for a in answers]
    assert all("traceback" not in a.text.lower() for a in answers)
    accepted += [a.json()["task_id"] for a in answers if a.status_code == 202]
    filler.unlink()
    for task_id in accepted:  # none stays "running" once the disk has room again
        assert srv.wait_for(task_id, timeout=30)["status"] in {"completed", "failed"}

    srv.stop()
    filler = _fill(small_disk)
    with pytest.raises(RuntimeError, match="exited"):  # refuses to start, says why, moves nothing
        srv.start(timeout=30)
    assert "cannot start" in srv.log_text()
    assert not list(storage.glob("task_cache.corrupt-*"))
    filler.unlink()
    srv.start()
    for task_id in accepted:
        assert srv.status(task_id)["status"] in {"completed", "failed"}


# --- 7: the cache deleted under a running server -----------------------------------------


def test_7_a_deleted_cache_is_detected_nothing_is_accepted_and_a_restart_loses_no_accepted_task(make_server, tmp_path):
    storage = tmp_path / "task_storage"
    srv: Server = make_server(storage, workers=2)
    done = [srv.run("diag_noop")["task_id"] for _ in range(4)]
    for task_id in done:
        srv.task_file(task_id)
    shutil.rmtree(storage / "task_cache")
    accepted, codes = [], []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = srv.client.post("/run/diag_noop")
        codes.append(answer.status_code)
        assert answer.status_code in {202, 503}, answer.text
        if answer.status_code == 202:
            accepted.append(answer.json()["task_id"])
        elif codes[-4:] == [503] * 4:
            break
        time.sleep(0.05)
    assert codes[-4:] == [503] * 4, codes  # every worker stopped accepting
    health = srv.client.get("/health")
    assert health.status_code == 503 and "deleted" in json.dumps(health.json())

    srv.stop()
    srv.start()
    for task_id in done:
        assert srv.status(task_id)["status"] == "completed"
    for task_id in accepted:  # accepted before the loss was seen: still known after the restart
        assert srv.client.get(f"/status/{task_id}").status_code == 200


# --- 8: workers booting together ---------------------------------------------------------


def test_8_opening_the_cache_waits_while_another_process_holds_the_lock(tmp_path):
    """Before: diskcache writes its settings on open; with busy timeout 0 a concurrent boot failed."""
    open_cache(tmp_path / "c").close()
    holder = sqlite3.connect(tmp_path / "c" / "cache.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.5, lambda: holder.execute("ROLLBACK"))
    releaser.start()
    try:
        cache = open_cache(tmp_path / "c", busy_seconds=10)
        cache.close()
    finally:
        releaser.join()
        holder.close()


# --- 10: a paused worker that resumes ----------------------------------------------------


def test_10_a_worker_that_lost_its_task_aborts_the_step_and_cannot_overwrite_the_verdict(make_runner):
    """Before: a resumed worker ran its steps to completion and recorded them over WorkerLost."""
    from etl import registry

    runner = make_runner()
    store = runner.store
    step = registry.get_step("diag_sleep", include_diagnostic=True)
    task, _ = runner.submit("diag_sleep", step.params_model.model_validate({"seconds": 30}), {}, None, None)
    assert task.status is TaskStatus.RUNNING
    # What another process's reaper does when this worker stops heartbeating (paused, cut off).
    store.finish(task.task_id, TaskStatus.FAILED, "worker lost",
                 error={"type": "WorkerLost", "message": "worker lost", "traceback": None})
    deadline = time.monotonic() + 10
    while runner.running_here() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.running_here() == 0  # the step was told to abort and its slot left this worker
    time.sleep(0.5)
    final = store.get(task.task_id)
    assert final.status is TaskStatus.FAILED and final.error["type"] == "WorkerLost"
    assert [h["status"] for h in final.history] == ["queued", "running", "failed"]
    # A stale owner's late end is refused (fencing on the owner id).
    assert store.finish(task.task_id, TaskStatus.COMPLETED, "late", owner=runner.worker.id).status is TaskStatus.FAILED


def test_10_an_end_from_a_worker_that_no_longer_owns_the_task_is_ignored(tmp_path):
    store = _new_store(tmp_path / "s")
    other = WorkerInfo(id="host:2:cccccc", host="host", pid=2)
    store.heartbeat(ME)
    task, _ = store.submit(_task(), ME, None)
    assert store.finish(task.task_id, TaskStatus.COMPLETED, "done", owner=other.id).status is TaskStatus.RUNNING
    store.save_progress(task.task_id, 50, "half", [], 0, [], owner=other.id)
    assert store.get(task.task_id).progress == 0
    assert store.control([task.task_id], other.id) == {task.task_id: "lost"}
    assert store.control([task.task_id], ME.id) == {}
    store.close()


# --- 13: idempotency across expiry and rebuild -------------------------------------------


def test_13_an_expired_task_releases_its_idempotency_key(tmp_path):
    store = _new_store(tmp_path / "s", ttl_seconds=0.2)
    store.heartbeat(ME)
    first, _ = store.submit(_task(), ME, ("key", "fp"))
    store.finish(first.task_id, TaskStatus.COMPLETED, "done")
    time.sleep(0.3)
    again, replayed = store.submit(_task(), ME, ("key", "fp"))
    assert not replayed and again.task_id != first.task_id
    store.close()


def test_13_idempotency_keys_survive_a_rebuild_from_the_task_files(tmp_path):
    store = _new_store(tmp_path / "s")
    store.heartbeat(ME)
    first, _ = store.submit(_task(), ME, ("key", "fp"))
    store.close()
    shutil.rmtree(tmp_path / "s" / "task_cache")
    store = _new_store(tmp_path / "s")
    store.ensure_index("me")
    store.heartbeat(ME)
    again, replayed = store.submit(_task(), ME, ("key", "fp"))
    assert replayed and again.task_id == first.task_id
    store.close()


# --- found by reading --------------------------------------------------------------------


def test_cleanup_stops_when_its_lease_renewal_is_refused_and_records_nothing(tmp_path):
    """Before: a refused renewal was ignored, so a second cleaner could start and both wrote totals."""
    store = _new_store(tmp_path / "s", ttl_seconds=0)
    store.heartbeat(ME)
    for _ in range(3):
        task, _ = store.submit(_task(), ME, None)
        store.finish(task.task_id, TaskStatus.COMPLETED, "done")
    time.sleep(1.1)
    with pytest.raises(LeaseLost):
        store.expire(batch=1, between_batches=lambda: False)
    assert store.acquire_lease("cleanup", "other-worker", 60)
    assert not store.record_cleanup_run({"removed": 1}, time.time() + 60, "cleanup", "me")
    assert store.cleanup_state()["totals"] == {"runs": 0, "removed": 0}
    store.close()


def test_listing_one_step_walks_that_steps_index_only(tmp_path):
    """Before: ?step= paged through every task of every step (an event-loop stall with many tasks)."""
    store = _new_store(tmp_path / "s", max_running=10_000, max_queued=10_000)
    store.heartbeat(ME)
    rare = [store.submit(_task("rare"), ME, None)[0].task_id for _ in range(3)]
    tasks = [_task() for _ in range(3000)]
    for task in tasks:
        task.transition(TaskStatus.COMPLETED, "seeded", 3600)
    store.import_tasks(tasks)
    reads = []
    original = store._range
    store._range = lambda prefix, **kw: reads.append(prefix) or original(prefix, **kw)
    page, cursor = store.list_tasks(status=None, step="rare", limit=2, cursor=None)
    page2, _ = store.list_tasks(status=None, step="rare", limit=2, cursor=cursor)
    assert [t.task_id for t in page + page2] == rare[::-1]
    assert set(reads) == {"step:rare:"}
    store.finish(rare[0], TaskStatus.COMPLETED, "done")
    done, cursor = store.list_tasks(status=TaskStatus.COMPLETED, step="rare", limit=5, cursor=None)
    assert [t.task_id for t in done] == [rare[0]] and cursor is None
    store.close()


def test_a_step_and_status_filter_over_many_tasks_answers_in_bounded_pages(tmp_path, monkeypatch):
    from api.store import reading

    monkeypatch.setattr(reading, "STEP_SCAN_LIMIT", 1000)
    store = _new_store(tmp_path / "s", max_running=10_000, max_queued=10_000)
    store.heartbeat(ME)
    wanted = store.submit(_task(), ME, None)[0].task_id  # the oldest, still running
    tasks = [_task() for _ in range(2500)]
    for task in tasks:
        task.transition(TaskStatus.COMPLETED, "seeded", 3600)
    store.import_tasks(tasks)
    found, cursor, pages = [], None, 0
    while True:
        page, cursor = store.list_tasks(status=TaskStatus.RUNNING, step="diag_noop", limit=10, cursor=cursor)
        found += [t.task_id for t in page]
        pages += 1
        if cursor is None:
            break
    assert found == [wanted] and pages >= 2  # short pages with a cursor, never one unbounded scan
    store.close()


def test_storage_folders_are_0700_and_task_files_0600(tmp_path):
    store = _new_store(tmp_path / "s")
    store.heartbeat(ME)
    task, _ = store.submit(_task(), ME, None)
    for folder in (store.paths.root, store.paths.cache_dir, store.paths.logs_dir):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    assert stat.S_IMODE(os.stat(store.paths.task_file(task.task_id)).st_mode) == 0o600
    store.close()


def test_a_submit_waiting_for_the_store_lock_does_not_block_other_requests(make_server, tmp_path):
    """Before: POST /run slept on the event loop for the lock (up to 10 s), freezing the worker."""
    storage = tmp_path / "task_storage"
    srv: Server = make_server(storage, workers=1)
    holder = sqlite3.connect(storage / "task_cache" / "cache.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    submitted: list[httpx.Response] = []
    submitter = threading.Thread(target=lambda: submitted.append(srv.client.post("/run/diag_noop")))
    try:
        submitter.start()
        time.sleep(0.3)
        assert srv.client.get("/livez").status_code == 200
        assert not submitted  # the same single worker answered while its submit was still waiting
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    submitter.join(30)
    assert submitted and submitted[0].status_code == 202


def test_store_refuses_to_admit_once_its_database_is_gone(tmp_path):
    store = _new_store(tmp_path / "s")
    store.heartbeat(ME)
    shutil.rmtree(store.paths.cache_dir)
    with pytest.raises(StorageUnavailable, match="deleted"):
        store.submit(_task(), ME, None)
    store.close()


def test_10_a_worker_paused_past_its_limit_resumes_aborts_its_step_and_keeps_the_verdict(make_server, tmp_path):
    """SIGSTOP, declared lost by the others, SIGCONT: the step must not run on to completion."""
    import signal

    srv: Server = make_server(tmp_path / "task_storage", workers=2, heartbeat_interval_seconds=0.2,
                              worker_lost_after_seconds=0.5)
    task_id = srv.run("diag_sleep", seconds=120)["task_id"]
    owner = srv.wait_for(task_id, {"running"})["worker"]["pid"]
    # The test client's kept-alive connection is the owner's (it accepted the run): a read on it
    # hangs while the owner is paused. Give it up after 2 s (the next poll opens a new connection,
    # which the other worker accepts) instead of after the client's 30 s.
    srv.client.timeout = httpx.Timeout(2)
    os.kill(owner, signal.SIGSTOP)
    try:
        lost = srv.wait_for(task_id, timeout=40)
    finally:
        os.kill(owner, signal.SIGCONT)
    assert lost["status"] == "failed" and lost["error"]["type"] == "WorkerLost"
    deadline = time.monotonic() + 20
    while "no longer owned by this worker" not in srv.log_text():
        assert time.monotonic() < deadline, "the resumed worker did not abort its step"
        time.sleep(0.1)
    time.sleep(1)
    final = srv.status(task_id)
    assert final["status"] == "failed" and final["error"]["type"] == "WorkerLost"
    assert [h["status"] for h in final["history"]] == ["queued", "running", "failed"]


def test_log_reads_seek_to_the_line_asked_and_hold_back_a_line_still_being_written(tmp_path):
    from api.store.logindex import STRIDE, LogIndex

    log = tmp_path / "t.log"
    log.write_text("".join(f"line {n}\n" for n in range(1, 3 * STRIDE + 11)) + "half a li", encoding="utf-8")
    index = LogIndex()
    assert index.read(log, 0, 2, False) == ["line 1", "line 2"]
    assert index.read(log, 2 * STRIDE + 5, 3, False) == [f"line {2 * STRIDE + n}" for n in (6, 7, 8)]
    assert index.read(log, 3 * STRIDE + 8, 10, False) == [f"line {3 * STRIDE + n}" for n in (9, 10)]
    assert index.read(log, 3 * STRIDE + 8, 10, True)[-1] == "half a li"
    with open(log, "a", encoding="utf-8") as out:
        out.write("ne\nnext\n")
    assert index.read(log, 3 * STRIDE + 10, 10, False) == ["half a line", "next"]
    log.write_text("fresh\n", encoding="utf-8")  # replaced (shorter): the index starts again
    assert index.read(log, 0, 10, False) == ["fresh"]
    assert index.read(log, 5, 10, False) == []


def test_cleanup_leaves_no_key_of_an_expired_task_behind(tmp_path):
    """Every index entry of a removed task goes with it (the per-step index leaked before)."""
    store = _new_store(tmp_path / "s", ttl_seconds=0)
    store.heartbeat(ME)
    before = set(store.cache.iterkeys())
    task, _ = store.submit(_task("rare_step"), ME, ("k", "fp"))
    store.finish(task.task_id, TaskStatus.COMPLETED, "done")
    time.sleep(1.1)
    assert store.expire()["removed"] == 1
    left = {key for key in store.cache.iterkeys() if task.task_id in key or key.startswith("step:rare_step")}
    assert left == set(), left
    assert not store.list_tasks(status=None, step="rare_step", limit=10, cursor=None)[0]
    assert {k for k in store.cache.iterkeys() if k.startswith(("task:", "status:", "step:"))} <= before
    store.close()
