"""The task store against a real diskcache in a temporary folder."""

from __future__ import annotations

import asyncio
import json
import pickle
import shutil
import sqlite3
import threading
import time

import pytest

from api.errors import Conflict, QueueFull, TaskNotFound
from api.store.cachedb import CacheCorrupt, UnsafeCacheRow, open_cache
from api.store.files import write_json_atomic
from api.store.keys import K_TASK
from api.store import TaskStore
from api.workers import WorkerInfo
from api.task import Task, TaskStatus, mask_secrets, new_task_id, now_iso

ME = WorkerInfo(id="host:1:aaaaaa", host="host", pid=1)


def _task(step: str = "diag_noop", **params) -> Task:
    task_id = new_task_id()
    return Task(task_id=task_id, step_name=step, status=TaskStatus.QUEUED, created_at=now_iso(), params=params)


def _submit(store: TaskStore, step: str = "diag_noop", **params) -> Task:
    store.heartbeat(ME)
    task, replayed = store.submit(_task(step, **params), ME, None)
    assert not replayed
    return task


def test_admission_cap_queue_and_full(store: TaskStore):
    first, second = _submit(store), _submit(store)
    assert first.status is second.status is TaskStatus.RUNNING
    queued = [_submit(store) for _ in range(3)]
    assert all(t.status is TaskStatus.QUEUED for t in queued)
    with pytest.raises(QueueFull) as full:
        _submit(store)
    assert full.value.headers["Retry-After"]
    assert store.live_running() == 2 and store.queued_count() == 3

    store.finish(first.task_id, TaskStatus.COMPLETED, "done", result={"ok": 1})
    started = store.claim_next(ME)
    assert started is not None and started.task_id == queued[0].task_id  # FIFO
    assert store.claim_next(ME) is None  # the cap holds
    store.finish(second.task_id, TaskStatus.FAILED, "boom", error={"type": "X", "message": "m", "traceback": None})
    assert store.claim_next(ME).task_id == queued[1].task_id


def test_dead_owner_frees_its_slot_and_is_reaped(store: TaskStore):
    ghost = WorkerInfo(id="host:99:bbbbbb", host="host", pid=99)
    store.heartbeat(ghost)
    store.heartbeat(ME)
    task, _ = store.submit(_task(), ghost, None)
    assert store.live_running() == 1
    # A heartbeat older than the limit: the slot no longer counts, and the reaper fails the task.
    store.cache.set("worker:" + ghost.id, {**ghost.as_dict(), "at": time.time() - 10})
    assert store.live_running() == 0
    assert store.reap_lost() == [task.task_id]
    lost = store.get(task.task_id)
    assert lost.status is TaskStatus.FAILED and lost.error["type"] == "WorkerLost"
    assert store.reap_lost() == []


def test_terminal_states_never_change_and_history_is_kept(store: TaskStore):
    task = _submit(store)
    store.finish(task.task_id, TaskStatus.COMPLETED, "done", result=[1])
    store.finish(task.task_id, TaskStatus.FAILED, "late", error={"type": "X"})
    stored = store.get(task.task_id)
    assert stored.status is TaskStatus.COMPLETED and stored.result == [1]
    assert [h["status"] for h in stored.history] == ["queued", "running", "completed"]
    assert stored.expires_at > stored.completed_at
    with pytest.raises(ValueError):
        stored.transition(TaskStatus.RUNNING, "again", 10)


def test_stop_queued_and_running(store: TaskStore):
    running = _submit(store)
    _submit(store)
    queued = _submit(store)
    stopped = store.request_stop(queued.task_id, {"role": "operator"})
    assert stopped.status is TaskStatus.STOPPED and store.queued_count() == 0
    flagged = store.request_stop(running.task_id, None)
    assert flagged.status is TaskStatus.RUNNING and flagged.stop_requested
    assert store.control([running.task_id], ME.id) == {running.task_id: "stop"}
    store.finish(running.task_id, TaskStatus.STOPPED, "acknowledged")
    assert store.control([running.task_id], ME.id) == {running.task_id: "lost"}  # no longer running here


def test_idempotency_key(store: TaskStore):
    store.heartbeat(ME)
    first, replayed = store.submit(_task(), ME, ("key1", "fp1"))
    again, replayed_again = store.submit(_task(), ME, ("key1", "fp1"))
    assert not replayed and replayed_again and again.task_id == first.task_id
    with pytest.raises(Conflict):
        store.submit(_task(), ME, ("key1", "other request"))


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "..", "a" * 36, "", "00000000-0000-0000-0000-00000000000G",
                                     "01a211fd-f7b2-7573-8176-10b09acdef95/../x", "01A211FD-F7B2-7573-8176-10B09ACDEF95"])
def test_hostile_ids_never_reach_the_filesystem(store: TaskStore, hostile: str):
    with pytest.raises(TaskNotFound):
        store.get(hostile)
    with pytest.raises(TaskNotFound):
        store.paths.task_file(hostile)
    with pytest.raises(TaskNotFound):
        store.request_stop(hostile, None)


def test_expired_task_is_not_found_and_cleanup_spares_live_tasks(store: TaskStore):
    store.ttl_seconds = 0.2
    ended = _submit(store)
    running = _submit(store)
    queued = _submit(store)
    work = store.paths.work_dir(ended.task_id)
    work.mkdir(parents=True)
    (work / "scratch.csv").write_text("a;b\n")
    store.paths.log_file(ended.task_id).write_text("log\n")
    store.finish(ended.task_id, TaskStatus.COMPLETED, "done")
    assert store.expire()["removed"] == 0  # not yet
    time.sleep(1.3)
    with pytest.raises(TaskNotFound):
        store.get(ended.task_id)
    outcome = store.expire()
    assert outcome["removed"] == 1 and outcome["task_ids"] == [ended.task_id]
    assert not store.paths.task_file(ended.task_id).exists()
    assert not store.paths.log_file(ended.task_id).exists()
    assert not work.exists()
    assert store.get(running.task_id).status is TaskStatus.RUNNING
    assert store.get(queued.task_id).status is TaskStatus.QUEUED
    assert store.counters().by_status()["completed"] == 0


def test_list_newest_first_with_filters_and_cursor(store: TaskStore):
    store.max_running = 100
    store.max_queued = 100
    made = [_submit(store, "diag_noop" if i % 2 else "diag_sleep") for i in range(7)]
    for task in made[:3]:
        store.finish(task.task_id, TaskStatus.COMPLETED, "done")
    page, cursor = store.list_tasks(status=None, step=None, limit=4, cursor=None)
    assert [t.task_id for t in page] == [t.task_id for t in reversed(made)][:4]
    rest, end = store.list_tasks(status=None, step=None, limit=4, cursor=cursor)
    assert [t.task_id for t in rest] == [t.task_id for t in reversed(made)][4:] and end is None
    done, _ = store.list_tasks(status=TaskStatus.COMPLETED, step=None, limit=10, cursor=None)
    assert {t.task_id for t in done} == {t.task_id for t in made[:3]}
    sleeps, _ = store.list_tasks(status=None, step="diag_sleep", limit=10, cursor=None)
    assert {t.task_id for t in sleeps} == {t.task_id for t in made[::2]}


def test_planted_pickle_row_is_refused(store: TaskStore, tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    payload = pickle.dumps(Boom())
    db = sqlite3.connect(store.paths.cache_dir / "cache.db")
    now = time.time()
    db.execute(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)"
        " VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 4, NULL, ?)",
        (K_TASK + "planted", now, now, sqlite3.Binary(payload)),
    )
    db.commit()
    db.close()
    with pytest.raises(UnsafeCacheRow):
        store.cache.get(K_TASK + "planted")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(TypeError):
        store.cache.set(("tuple", "key"), 1)


def test_corrupt_cache_is_detected(tmp_path):
    folder = tmp_path / "task_cache"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheCorrupt):
        open_cache(folder)


def test_rebuild_from_json_files(tmp_path, store: TaskStore):
    store.max_running = 1
    done = _submit(store, note="ação")
    store.finish(done.task_id, TaskStatus.COMPLETED, "done", result={"x": "é"})
    running = _submit(store)
    queued = [_submit(store) for _ in range(2)]
    store.close()
    shutil.rmtree(store.paths.cache_dir)
    store.open()
    assert not store.is_initialized()
    assert store.rebuild() == 4
    assert store.get(done.task_id).result == {"x": "é"}
    assert store.get(running.task_id).status is TaskStatus.RUNNING
    assert store.queued_count() == 2
    assert store.counters().by_status() == {"queued": 2, "running": 1, "completed": 1, "failed": 0, "stopped": 0}
    # The owner of the running task is gone: the reaper fails it.
    store.cache.set("worker:" + ME.id, {**ME.as_dict(), "at": 0})
    assert store.reap_lost() == [running.task_id]
    store.heartbeat(ME)
    assert store.claim_next(ME).task_id == queued[0].task_id


def test_json_file_is_readable_utf8_with_masked_secrets(store: TaskStore):
    task = _submit(store, password="hunter2", nested={"api_key": "k", "fund": "Fundo Ação"})
    text = store.paths.task_file(task.task_id).read_text(encoding="utf-8")
    assert "Fundo Ação" in text and "\\u" not in text
    assert "hunter2" not in text and '"password": "***"' in text
    data = json.loads(text)
    assert data["params"]["nested"]["api_key"] == "***"
    assert data["created_at"].endswith("+00:00")
    assert mask_secrets({"senha": "x", "user": "y"}) == {"senha": "***", "user": "y"}
    # "pass" as a whole word of the name is a secret; inside a word ("passivo", a fund's liabilities;
    # "bypass", "compass") it is data.
    assert mask_secrets({"db_pass": "x", "dbPass": "x", "pass": "x", "passivo": {"VL_PASSIVO": "1.0"},
                         "bypass": "y", "compass": "z"}) == {
        "db_pass": "***", "dbPass": "***", "pass": "***", "passivo": {"VL_PASSIVO": "1.0"}, "bypass": "y", "compass": "z"}


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x.json"
    for i in range(20):
        write_json_atomic(target, {"i": i})
    assert json.loads(target.read_text()) == {"i": 19}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_lease_is_exclusive(store: TaskStore):
    assert store.acquire_lease("cleanup", "a", 10)
    assert not store.acquire_lease("cleanup", "b", 10)
    assert store.acquire_lease("cleanup", "a", 10)  # renewal
    store.release_lease("cleanup", "a")
    assert store.acquire_lease("cleanup", "b", 0.1)
    time.sleep(0.2)
    assert store.acquire_lease("cleanup", "a", 10)  # an expired lease can be taken over


def test_a_dead_local_process_is_lost_at_once_and_a_busy_one_is_not(store: TaskStore):
    import subprocess
    import sys

    from api.workers import HOSTNAME

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    created = __import__("psutil").Process(child.pid).create_time()
    child.wait()
    dead = WorkerInfo(id=f"{HOSTNAME}:{child.pid}:dddddd", host=HOSTNAME, pid=child.pid)
    store.cache.set("worker:" + dead.id, {**dead.as_dict(), "at": time.time(), "created": created})
    assert dead.id not in store.alive_workers()  # fresh heartbeat, but the process is gone

    me = WorkerInfo.this_process()
    store.heartbeat(me)
    store.cache.set("worker:" + me.id, {**store.cache.get("worker:" + me.id), "at": time.time() - 30})
    assert me.id in store.alive_workers()  # silent for 30 s, but its process is alive: busy, not dead


def test_a_file_left_behind_by_a_dead_writer_is_swept(store: TaskStore):
    task = _submit(store)
    with store._transaction():  # a change committed by a process that died before writing the file
        stored = store._load(task.task_id)
        stored.message = "changed by a worker that then died"
        store._write(stored, stored.status)
    assert "then died" not in store.paths.task_file(task.task_id).read_text()
    assert store.sweep_dirty(older_than_seconds=0) == 1
    assert "then died" in store.paths.task_file(task.task_id).read_text()
    assert store.sweep_dirty(older_than_seconds=0) == 0


def test_a_change_committed_by_another_thread_wakes_its_watchers_only(store: TaskStore):
    watch = store.watch
    task, other = _submit(store), _submit(store)

    async def wait_for_end() -> tuple[bool, bool]:
        with watch.watch(task.task_id) as ended, watch.watch(other.task_id) as untouched:
            finisher = threading.Thread(target=store.finish, args=(task.task_id, TaskStatus.COMPLETED, "done"))
            finisher.start()
            await asyncio.wait_for(ended.wait(), 10)
            finisher.join()
            return ended.is_set(), untouched.is_set()

    assert asyncio.run(wait_for_end()) == (True, False)
    assert store.get(task.task_id).status is TaskStatus.COMPLETED
    assert watch._waiting == {}  # every watcher unregistered itself


def test_the_writer_thread_writes_running_states_after_a_pause_and_ended_ones_at_once(store: TaskStore):
    store.start_file_writer()
    short, long = _submit(store), _submit(store)
    store.finish(short.task_id, TaskStatus.COMPLETED, "done")

    def file_status(task: Task, timeout: float = 10) -> str:
        path = store.paths.task_file(task.task_id)
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"{path.name} was never written"
            time.sleep(0.005)
        return json.loads(path.read_text(encoding="utf-8"))["status"]

    assert file_status(short) == "completed"
    assert file_status(long) == "running"  # a task that does not end soon still gets its file
    store.finish(long.task_id, TaskStatus.FAILED, "broke")
    store.flush_files()
    assert file_status(long) == "failed"
    assert store.sweep_dirty(older_than_seconds=0) == 0 and store.dirty_count() == 0  # nothing left to write
