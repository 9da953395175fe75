"""Retries, dead letters and pipelines in Redis (mixed into RedisStore): the same verbs as the
local store's (api/store/orchestration.py), each change committed by one script.

Python builds the records with the same functions as the local store; the COMMIT script applies
a change together with its orchestration side (the due set, the queue, the dead letters, a
pipeline's new node tasks) only if the record did not move meanwhile, so whichever process acts
(an API process's loop, a worker host, the reaper), it acts once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api.store.events import event_of
from api.store.orchestration import PipelineStep, resolve_dead, retry_delay, wait_for_retry
from api.store.redis import records as R
from api.task import Task, TaskStatus, now_iso

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore
    from api.workers import WorkerInfo

logger = logging.getLogger(__name__)

# A new pipeline task, stored as running (it holds no slot: its nodes do).
# ARGV: id, step, json, deltas, event, idem_key, fingerprint, idem_json -> {'new', event id} | {'replay', json}
INSERT_PIPELINE = """
local P = '{etl}:'
local id = ARGV[1]
if ARGV[6] ~= '' then
  local seen = redis.call('GET', P .. 'idem:' .. ARGV[6])
  if seen then
    local record = redis.call('HGET', P .. 'task:' .. cjson.decode(seen)['task_id'], 'json')
    if record then return {'replay', record} end
  end
  redis.call('SET', P .. 'idem:' .. ARGV[6], ARGV[8])
end
local seq = redis.call('INCR', P .. 'event_seq')
redis.call('SET', P .. 'event:' .. (seq % 20000), '{"id":' .. seq .. ',' .. string.sub(ARGV[5], 2))
local SENTINEL = '"event_id":-7305620094812345}'
local record = ARGV[3]
if string.sub(record, -#SENTINEL) == SENTINEL then
  record = string.sub(record, 1, -#SENTINEL - 1) .. '"event_id":' .. seq .. '}'
end
redis.call('HSET', P .. 'task:' .. id, 'json', record, 'rev', 1)
redis.call('ZADD', P .. 'status:running', 0, id)
redis.call('ZADD', P .. 'all', 0, id)
redis.call('ZADD', P .. 'step:' .. ARGV[2], 0, id)
redis.call('SADD', P .. 'pipelines', id)
for field, delta in pairs(cjson.decode(ARGV[4])) do
  if delta ~= 0 then redis.call('HINCRBYFLOAT', P .. 'counters', field, delta) end
end
redis.call('XADD', P .. 'changes', 'MAXLEN', '~', '100000', '*', 'id', id, 'rev', 1)
return {'new', tostring(seq)}
"""


class RedisOrchestration:
    """Retries, dead letters and pipelines (mixed into RedisStore)."""

    retry_decider: Callable[[Task, dict[str, Any]], float | None] | None = None

    # --- retries and dead letters (inside finish's commit) ----------------------------------

    def _failing(self: RedisStore, task: Task, reason: str, error: dict[str, Any] | None, ops: list) -> bool:
        """A failing task: True if it waits for its next attempt (``ops`` gets the due time);
        otherwise it is listed as a dead letter (unless a pipeline owns it) and the caller fails it."""
        delay = retry_delay(self.retry_decider, task, error)
        if delay is None:
            if task.parent_id is None:
                task.dead_letter = {"listed_at": now_iso()}
                ops.append(["dead"])
            return False
        wait_for_retry(task, reason, error, delay, self.ttl_seconds)
        ops.append(["retry", int(delay * 1000)])
        return True

    def release_due(self: RedisStore, limit: int = 200) -> list[str]:
        """Put retries whose time has come (by Redis time) at the back of the queue; returns their ids."""
        with self._guarded():
            seconds, micros = self.r.time()
            due = self.r.zrangebyscore(R.K_DUE, "-inf", seconds * 1000 + micros // 1000, start=0, num=limit)
        released = []
        for task_id in due:

            def change(task: Task) -> bool:
                if task.status is not TaskStatus.QUEUED or task.retry_due is None:
                    return False
                task.retry_due = None
                task.message = f"attempt {task.attempt}: waiting for a free slot"
                task.history.append({"status": task.status.value, "at": now_iso(),
                                     "reason": f"attempt {task.attempt} joined the queue"})
                return True

            # The 'due' guard takes the entry off the due set in the same commit: released once.
            with self._guarded():
                task, done = self._commit(task_id, change, guard="due", ops=[["requeue"]])
                if not done and (task is None or task.status is not TaskStatus.QUEUED or task.retry_due is None):
                    self.r.zrem(R.K_DUE, task_id)  # no longer waiting (removed, or released elsewhere)
            if done:
                released.append(task_id)
        return released

    def waiting_retries(self: RedisStore) -> int:
        with self._guarded():
            return self.r.zcard(R.K_DUE)

    def is_dead_letter(self: RedisStore, task_id: str) -> bool:
        with self._guarded():
            return self.r.zscore(R.K_DEAD, task_id) is not None

    def dead_letter_count(self: RedisStore) -> int:
        with self._guarded():
            return self.r.zcard(R.K_DEAD)

    def dead_letters(self: RedisStore, limit: int = 100) -> list[Task]:
        """Tasks that failed after their last attempt and nobody retried or dismissed, newest first."""
        found = []
        with self._guarded():
            for task_id in self.r.zrevrange(R.K_DEAD, 0, limit - 1):
                task = self._load(task_id)
                if task is None:
                    self.r.zrem(R.K_DEAD, task_id)  # removed by cleanup
                elif not task.expired():
                    found.append(task)
        return found

    def resolve_dead_letter(self: RedisStore, task_id: str, how: str, record: dict[str, Any]) -> Task | None:
        """Take a task off the dead letters: ``how`` is "dismissed" or "retried" (record: who, when, new id)."""

        def change(task: Task) -> bool:
            resolve_dead(task, how, record)
            return True

        with self._guarded():
            task, _ = self._commit(task_id, change, ops=[["undead"]])
        return task

    # --- pipelines ---------------------------------------------------------------------------

    def start_pipeline(self: RedisStore, parent: Task) -> Task:
        """Store a new pipeline task as running (it holds no slot: its nodes do)."""
        parent.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(), "reason": "accepted"})
        parent.message = "pipeline started"
        parent.transition(TaskStatus.RUNNING, "pipeline started: its nodes start as their dependencies end",
                          self.ttl_seconds)
        parent.rev = 1
        key, fingerprint = self._fire_idempotency() or ("", "")
        if key:  # a schedule's occurrence: cleanup removes the key with the task
            parent.idempotency_key, parent.idempotency_fingerprint = key, fingerprint
        with self._guarded():
            answer = self._run("INSERT_PIPELINE", parent.task_id, parent.step_name, R.encode_for_feed(parent),
                               self._deltas(parent, None), R.dumps(event_of(parent, "status")), key, fingerprint,
                               R.dumps({"task_id": parent.task_id, "fingerprint": fingerprint}))
        if answer[0] == "replay":
            self._fire_replayed()
            return R.decode(answer[1])
        parent.event_id = int(answer[1])
        self.watch.changed(parent.task_id)
        return parent

    def wait_pipeline_news(self: RedisStore, timeout: float) -> list[str]:
        """Pipelines whose node just ended (recorded on a worker host), each handed to one API
        process; waits up to ``timeout`` s for the first."""
        with self._guarded():
            first = self.r.blpop([R.K_PIPELINE_NEWS], timeout=timeout)
            if first is None:
                return []
            more = self.r.lpop(R.K_PIPELINE_NEWS, 100) or []
        return list(dict.fromkeys([first[1], *more]))

    def running_pipelines(self: RedisStore) -> list[str]:
        with self._guarded():
            return sorted(self.r.smembers(R.K_PIPELINES))

    def advance_pipeline(self: RedisStore, parent_id: str, plan: Callable[[Task, dict[str, Task]], PipelineStep],
                         worker: WorkerInfo, starts_here: bool = True) -> tuple[Task | None, list[Task]]:
        """Look at a pipeline's nodes and act on ``plan``'s decision in one commit.

        The pipeline task and its new node tasks are written by one script, and only if the
        pipeline task did not change since it was read (otherwise the plan is made again), so
        two processes advancing the same pipeline never submit a node twice. New nodes join the
        queue and are dispatched from it like any task; none runs in this process (the list of
        children started here is always empty).
        """
        ops: list = []
        decisions: list[PipelineStep] = []

        def change(parent: Task) -> bool:
            ops.clear()
            decisions.clear()
            if parent.status.terminal or parent.pipeline is None:
                return False
            ids = {name: node["task_id"] for name, node in parent.pipeline["nodes"].items() if node.get("task_id")}
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids.values():
                pipe.hget(R.K_TASK + task_id, "json")
            raws = pipe.execute() if ids else []
            children = {name: R.decode(raw) for name, raw in zip(ids, raws) if raw is not None}
            before = repr(parent.pipeline)
            decision = plan(parent, children)
            decisions.append(decision)
            for child in decision.submit:
                child.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(), "reason": "accepted"})
                child.message = "waiting for a free slot"
                child.rev = 1
                concurrency = child.concurrency or {}
                ops.append(["child", child.task_id, child.step_name, R.encode_for_feed(child),
                            self._deltas(child, None), R.dumps(event_of(child, "status")),
                            concurrency.get("key") or "", str(concurrency.get("limit", 1))])
            if decision.end is not None:
                status, reason = decision.end
                parent.message = reason
                if status is TaskStatus.FAILED:
                    parent.error = {"type": "PipelineFailed", "message": reason, "traceback": None}
                    parent.dead_letter = {"listed_at": now_iso()}
                    ops.append(["dead"])
                parent.transition(status, reason, self.ttl_seconds)
                ops.append(["pipeline_end"])
            return bool(decision.end is not None or decision.submit or repr(parent.pipeline) != before)

        with self._guarded():
            parent, done = self._commit(parent_id, change, ops=ops)
        if parent is None:
            return None, []
        decision = decisions[0] if decisions else PipelineStep()
        if done:
            for child in decision.submit:
                self.watch.changed(child.task_id)
            if decision.submit:
                while self.claim_next() is not None:  # dispatch the new nodes now if slots are free
                    pass
        for task_id in decision.stop:
            self.request_stop(task_id, parent.stopped_by)
        return parent, []
