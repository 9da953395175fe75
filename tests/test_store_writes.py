"""How the local store's writers meet: the cross-process write lock, grouped admission, and the
encoded /status of ended tasks, against a real diskcache in a temporary folder."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.errors import Conflict, QueueFull, TaskNotFound
from api.store import StoreBusy, TaskStore
from api.store.cachedb import put
from api.store.keys import K_TASK
from api.store.writelock import WriteLock
from api.task import Task, TaskStatus, new_task_id, now_iso
from api.workers import WorkerInfo

ME = WorkerInfo(id="host:1:aaaaaa", host="host", pid=1)
posix_only = pytest.mark.skipif(os.name != "posix", reason="the kernel write lock is POSIX's flock")


def _task() -> Task:
    return Task(task_id=new_task_id(), step_name="diag_noop", status=TaskStatus.QUEUED, created_at=now_iso(),
                params={})


def _hold_lock(folder: str, held, release) -> None:
    lock = WriteLock(__import__("pathlib").Path(folder))
    assert lock.acquire(block=True)
    held.set()
    release.wait(30)
    lock.release()


@contextlib.contextmanager
def _other_process_holding_the_lock(store: TaskStore) -> Iterator[tuple[Any, Any]]:
    """Another process that holds the store's write lock until ``release`` is set: (holder, release)."""
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(store.paths.cache_dir), held, release))
    holder.start()
    try:
        assert held.wait(30)
        yield holder, release
    finally:
        release.set()
        holder.join(30)


@posix_only
def test_a_writer_waits_for_another_process_holding_the_write_lock(store: TaskStore):
    with _other_process_holding_the_lock(store) as (_, release):
        store.heartbeat(ME)
        # The event loop's kind of call does not wait: it hears StoreBusy while the lock is taken.
        with pytest.raises(StoreBusy):
            store.submit(_task(), ME, None, wait=False)
        answers = []
        waiter = threading.Thread(target=lambda: answers.append(store.submit(_task(), ME, None)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not answers  # asleep until the other process lets go
        release.set()
        waiter.join(30)
        assert answers and answers[0][0].status is TaskStatus.RUNNING


def test_grouped_admission_keeps_order_cap_and_refuses_only_the_refused(store: TaskStore):
    store.heartbeat(ME)
    keyed = _task()
    store.submit(keyed, ME, ("key", "fingerprint-a"))  # holds one of the two slots
    tasks = [_task() for _ in range(5)]
    items = [(tasks[0], None, None), (tasks[1], ("key", "fingerprint-b"), None), (tasks[2], None, None),
             (tasks[3], ("key", "fingerprint-a"), None), (tasks[4], None, None)]
    answers = store.submit_group(items, ME)

    assert answers[0] == (tasks[0], False) and tasks[0].status is TaskStatus.RUNNING  # the last free slot
    assert isinstance(answers[1], Conflict)  # same key, other request: refused, nothing of it kept
    assert answers[2] == (tasks[2], False) and tasks[2].status is TaskStatus.QUEUED
    replayed, again = answers[3]
    assert again and replayed.task_id == keyed.task_id
    assert answers[4] == (tasks[4], False) and tasks[4].status is TaskStatus.QUEUED
    with pytest.raises(TaskNotFound):
        store.get(tasks[1].task_id)
    assert store.queued_count() == 2 and store.live_running() == 2

    # The queue keeps their order (FIFO), and a full queue refuses within a group too.
    more = [_task() for _ in range(3)]
    answers = store.submit_group([(t, None, None) for t in more], ME)
    assert answers[0] == (more[0], False) and isinstance(answers[1], QueueFull) and isinstance(answers[2], QueueFull)
    store.finish(tasks[0].task_id, TaskStatus.COMPLETED, "done")
    assert store.claim_next(ME).task_id == tasks[2].task_id
    store.finish(keyed.task_id, TaskStatus.COMPLETED, "done")
    assert store.claim_next(ME).task_id == tasks[4].task_id


def test_an_ended_tasks_status_body_follows_its_stored_row(store: TaskStore):
    store.heartbeat(ME)
    task, _ = store.submit(_task(), ME, None)
    assert store.status_answer(task.task_id).status is TaskStatus.RUNNING  # not ended: the task itself
    store.finish(task.task_id, TaskStatus.COMPLETED, "done")
    body = store.status_answer(task.task_id)
    assert isinstance(body, bytes) and b'"completed"' in body
    assert store.status_answer(task.task_id) is body  # served again while the row is unchanged

    # Another process changes the row (here: a support edit of its message): seen at once.
    row = store._get(K_TASK + task.task_id)
    row["message"] = "checked by support"
    with store._transaction():
        put(store.cache, K_TASK + task.task_id, row)
    assert b"checked by support" in store.status_answer(task.task_id)

    # Expired or removed: not found, whatever was kept.
    row["expires_at"] = now_iso(time.time() - 1)
    with store._transaction():
        put(store.cache, K_TASK + task.task_id, row)
    with pytest.raises(TaskNotFound):
        store.status_answer(task.task_id)
    with store._transaction():
        store.cache.delete(K_TASK + task.task_id)
    with pytest.raises(TaskNotFound):
        store.status_answer(task.task_id)
    with pytest.raises(TaskNotFound):
        store.status_answer("../etc/passwd")


def _acquire_in_thread(lock: WriteLock, timeout: float) -> bool:
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(lock.acquire(block=True, timeout=timeout)))
    thread.start()
    thread.join(60)
    return got[0]


@posix_only
def test_a_writer_gives_up_after_the_store_timeout_and_the_lock_still_works(store: TaskStore):
    with contextlib.closing(WriteLock(store.paths.cache_dir)) as lock, \
            _other_process_holding_the_lock(store) as (holder, release):
        # A holder that never lets go (a stopped process): the wait ends, the caller answers 503.
        assert _acquire_in_thread(lock, 0.2) is False
        release.set()
        holder.join(30)
        # The abandoned wait let the lock go once it got it: the next writer gets it.
        assert _acquire_in_thread(lock, 30) is True
        lock.release()


def _write_tasks(store: TaskStore, count: int) -> None:
    for _ in range(count):
        task = _task()
        with store._transaction():
            put(store.cache, K_TASK + task.task_id, task.to_dict())


def _database_grows(store: TaskStore, before: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (store.paths.cache_dir / "cache.db").stat().st_size > before:
            return True
        time.sleep(0.05)
    return False


def test_committed_pages_reach_the_database_in_the_background_not_in_a_commit(store: TaskStore):
    # New rows live in the write-ahead log until a checkpoint copies them into cache.db. Commits
    # no longer do that below the safety limit, so without the checkpointer the file stays as it is.
    database = store.paths.cache_dir / "cache.db"
    store.cache._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = database.stat().st_size
    _write_tasks(store, 300)
    assert not _database_grows(store, before, within=1.0)

    store.start_checkpoints()
    assert _database_grows(store, before, within=5.0)
    _write_tasks(store, 1)  # the store still writes while its checkpointer runs
    store.close()  # stops the thread with the store
    assert not any(t.name == "etl-checkpoint" and t.is_alive() for t in threading.enumerate())


@posix_only
def test_one_process_of_the_machine_checkpoints_and_another_takes_over_when_it_stops(tmp_path):
    from api.store.checkpoint import Checkpointer

    stores = [TaskStore(tmp_path / "storage", tmp_path / "runs", tmp_path / "out", ttl_seconds=3600, max_running=2,
                        max_queued=3, worker_lost_after_seconds=3) for _ in range(2)]
    for each in stores:
        each.open()
    first, second = (Checkpointer(each.cache, each.paths.cache_dir) for each in stores)
    try:
        assert first._holds_lock() is True
        assert second._holds_lock() is False
        first.start()
        first.stop()  # the thread closes its descriptor: the lock is free
        assert second._holds_lock() is True
    finally:
        first.stop()
        if second._lock_fd is not None:
            os.close(second._lock_fd)
        for each in stores:
            each.close()


def test_every_connection_reads_without_a_map_and_with_a_small_page_cache(tmp_path):
    # A mapped database is unmapped and mapped again by every read that follows another process's
    # commit (a TLB flush on every core each time); the store reads through SQLite's page cache,
    # which is kept small: each thread has a connection of its own.
    import diskcache

    from api.store.cachedb import CACHE_PAGES

    folder = tmp_path / "storage"
    made = TaskStore(folder, tmp_path / "runs", tmp_path / "out", ttl_seconds=3600, max_running=2, max_queued=3,
                     worker_lost_after_seconds=3)
    cache_dir = made.paths.cache_dir
    cache_dir.mkdir(parents=True)
    legacy = diskcache.Cache(str(cache_dir))  # made with diskcache's defaults: a 64 MB map
    assert legacy._con.execute("PRAGMA mmap_size").fetchone()[0] == 64 * 1024 * 1024
    assert legacy._con.execute("PRAGMA cache_size").fetchone()[0] == 8192
    legacy.close()

    made.open()
    try:
        def pragmas() -> tuple[int, int]:
            con = made.cache._con
            return con.execute("PRAGMA mmap_size").fetchone()[0], con.execute("PRAGMA cache_size").fetchone()[0]

        seen: list[tuple[int, int]] = []
        reader = threading.Thread(target=lambda: seen.append(pragmas()))
        reader.start()
        reader.join(10)
        assert seen == [(0, CACHE_PAGES)]  # another thread's own connection
        assert pragmas() == (0, CACHE_PAGES) and CACHE_PAGES < 8192
        made.submit(_task(), ME, None)
    finally:
        made.close()


@posix_only
def test_task_ends_that_meet_at_the_write_lock_share_one_commit_and_keep_their_own_answers(store: TaskStore,
                                                                                         tmp_path):
    store.max_running = 8
    store.heartbeat(ME)
    tasks = [store.submit(_task(), ME, None)[0] for _ in range(6)]
    assert all(t.status is TaskStatus.RUNNING for t in tasks)
    commits_before = store._commits.commits
    answers: dict[str, Any] = {}

    def end(task: Task) -> None:
        try:
            if task is tasks[2]:
                def refuse(_: Task) -> bool:
                    raise ValueError("this change is refused")
                answers[task.task_id] = store.update(task.task_id, refuse)
            else:
                answers[task.task_id] = store.finish(task.task_id, TaskStatus.COMPLETED, "done", owner=ME.id)
        except Exception as exc:
            answers[task.task_id] = exc

    with _other_process_holding_the_lock(store) as (_, release):
        threads = [threading.Thread(target=end, args=(task,)) for task in tasks]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        assert not answers  # every end waits for the other process: none is durable yet
        release.set()
        for thread in threads:
            thread.join(30)

    assert 1 <= store._commits.commits - commits_before < len(tasks)  # ends that met shared a commit
    assert isinstance(answers[tasks[2].task_id], ValueError)
    # What the refused change wrote was undone; the other ends are durable, as another process reads them.
    other = TaskStore(store.paths.root, tmp_path / "r", tmp_path / "o", ttl_seconds=3600, max_running=8,
                      max_queued=3, worker_lost_after_seconds=3)
    other.open()
    try:
        for task in tasks:
            status = other.get(task.task_id).status
            assert status is (TaskStatus.RUNNING if task is tasks[2] else TaskStatus.COMPLETED)
            if task is not tasks[2]:
                assert answers[task.task_id].status is TaskStatus.COMPLETED
    finally:
        other.close()


def test_a_change_made_inside_a_transaction_joins_it(store: TaskStore):
    store.heartbeat(ME)
    task = store.submit(_task(), ME, None)[0]
    with store._transaction():  # the thread already holds the lock: no wait for itself
        ended = store.finish(task.task_id, TaskStatus.COMPLETED, "done", owner=ME.id)
    assert ended.status is TaskStatus.COMPLETED and store.get(task.task_id).status is TaskStatus.COMPLETED
