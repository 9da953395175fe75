"""The JSON files of the API hosts, written from the Redis change stream (one writer per host).

Each host keeps its own copy of every task file. One API process per host holds the writer
lease; it follows the host's consumer group and writes a batch of changes at once, so the
accepted, started and ended changes of a short task come as one file write (temp file, fsync,
replace, as everywhere) instead of three. A writer that dies leaves its lease to expire and its
unwritten changes to the next writer (XAUTOCLAIM).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from api.store.files import write_json_atomic
from api.store.redis import records as R
from api.task import Task, is_task_id
from api.workers import HOSTNAME

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)

ORPHAN_CLAIM_SECONDS = 5.0
# After the first change of a batch, the writer waits this long for more (coalescing); the file
# still follows each change well within a second.
COALESCE_SECONDS = 0.05
WRITER_LEASE_SECONDS = 5.0
BLOCK_MS = 500
BATCH = 2000


def write_files(store: RedisStore, task_ids: list[str]) -> None:
    """Write these tasks' files, each until it holds the newest revision (other writers may race);
    one pipelined read for the records and one for the revisions, whatever their number."""
    pending = [task_id for task_id in task_ids if is_task_id(task_id)]
    for _ in range(10):
        if not pending:
            return
        pipe = store.r.pipeline(transaction=False)
        for task_id in pending:
            pipe.hget(R.K_TASK + task_id, "json")
        written: list[Task] = []
        for raw in pipe.execute():
            if raw is not None:
                task = R.decode(raw)
                write_json_atomic(store.paths.task_file(task.task_id), task.file_view())
                written.append(task)
        pipe = store.r.pipeline(transaction=False)
        for task in written:
            pipe.hget(R.K_TASK + task.task_id, "rev")
        pending = [task.task_id for task, rev in zip(written, pipe.execute()) if rev is not None and rev != str(task.rev)]


class FileMirror:
    """Follows the change stream and writes ``<id>.json`` on this host (a consumer group per host,
    so every host keeps its own copy; the writer lease picks the API process that writes)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.group = f"files:{HOSTNAME}:{store.paths.root}"
        self.consumer = f"{HOSTNAME}:{threading.get_native_id()}:{time.time_ns()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etl-files", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)

    def _ensure_group(self, r: redis.Redis) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
            r.xgroup_create(R.K_CHANGES, self.group, id="0", mkstream=True)

    def _write(self, r: redis.Redis, entries: list[tuple[str, dict[str, str]]]) -> None:
        write_files(self.store, list(dict.fromkeys(fields.get("id", "") for _, fields in entries)))
        if entries:
            r.xack(R.K_CHANGES, self.group, *[entry_id for entry_id, _ in entries])

    def _read(self, r: redis.Redis, block: int | None) -> list[tuple[str, dict[str, str]]]:
        reply = r.xreadgroup(self.group, self.consumer, {R.K_CHANGES: ">"}, count=BATCH, block=block)
        return [entry for _, entries in reply or [] for entry in entries]

    def _run(self) -> None:
        r: redis.Redis | None = None
        last_claim = 0.0
        leading, lease_checked = False, 0.0
        while not self._stop.is_set():
            try:
                if r is None:
                    r = redis.Redis.from_url(self.store.url, decode_responses=True, socket_connect_timeout=1.0,
                                             socket_timeout=5.0)
                    self._ensure_group(r)
                if time.monotonic() - lease_checked >= WRITER_LEASE_SECONDS / 3:
                    lease_checked = time.monotonic()
                    leading = self.store.acquire_lease(self.group, self.consumer, WRITER_LEASE_SECONDS)
                if not leading:
                    self._stop.wait(WRITER_LEASE_SECONDS / 3)
                    continue
                if time.monotonic() - last_claim > ORPHAN_CLAIM_SECONDS:
                    # Changes a process of this host took but never wrote (it was killed): take them over.
                    last_claim = time.monotonic()
                    claimed = r.xautoclaim(R.K_CHANGES, self.group, self.consumer,
                                           min_idle_time=int(ORPHAN_CLAIM_SECONDS * 1000), start_id="0-0", count=500)
                    self._write(r, [entry for entry in claimed[1] if entry and entry[1] is not None])
                entries = self._read(r, BLOCK_MS)
                if entries:
                    self._stop.wait(COALESCE_SECONDS)
                    self._write(r, entries + self._read(r, None))
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc) and r is not None:
                    self._ensure_group(r)
                else:
                    logger.warning("task files: %s (retrying)", exc)
                    self._stop.wait(1)
            except Exception as exc:
                logger.warning("task files cannot follow Redis: %s (retrying)", exc)
                r = None
                self._stop.wait(1)
        if leading:
            with contextlib.suppress(Exception):
                self.store.release_lease(self.group, self.consumer)
