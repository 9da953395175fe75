"""How task records and counters are laid out in Redis (keys, JSON, flat counter fields)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from api.store.counters import DURATION_BUCKETS, HOURS_KEPT, Counters
from api.task import Task

PREFIX = "{etl}:"  # the one hash tag: every key lands in the same Cluster slot
K_TASK = PREFIX + "task:"  # hash {json, rev}
K_RUN = PREFIX + "run:"  # hash {token, owner}: the fencing token of the dispatch and who claimed it
K_STOP = PREFIX + "stop:"  # pending stop request
K_LOG = PREFIX + "log:"  # list of log lines, bounded
K_IDEM = PREFIX + "idem:"
K_STATUS = PREFIX + "status:"  # zset per status (score 0, ids sorted by name = by age)
K_STEP = PREFIX + "step:"  # zset per step
K_ALL = PREFIX + "all"
K_QUEUE = PREFIX + "queue"  # list, FIFO
K_RUNNING = PREFIX + "running"  # zset id -> lease expiry (Redis ms)
K_EXPIRES = PREFIX + "expires"  # zset id -> expiry epoch s
K_COUNTERS = PREFIX + "counters"  # hash of flat counter fields
K_CAP = PREFIX + "cap"  # the live global cap
K_TTL = PREFIX + "ttl"  # the API hosts' ETL_TASK_TTL_HOURS in seconds, for the worker hosts
K_WORKERS = PREFIX + "workers"  # hash worker id -> heartbeat JSON
K_CHANGES = PREFIX + "changes"  # stream of (id, rev): the JSON-file writers follow it
K_CLEANUP = "cleanup:"  # relative to PREFIX (scripts add it): schedule, next, last, history, totals
K_LEASE = PREFIX + "lease:"
# Orchestration (orchestration.py, resources.py, schedules.py in this package)
K_DUE = PREFIX + "due"  # zset id -> Redis ms when a waiting retry joins the queue
K_DEAD = PREFIX + "dead"  # zset id -> Redis ms it was listed as a dead letter
K_PIPELINES = PREFIX + "pipelines"  # set of running pipeline task ids
K_PIPELINE_NEWS = PREFIX + "pipeline_news"  # list of pipeline ids whose node ended, popped by one API process
K_TASK_KEY = PREFIX + "taskkey"  # hash id -> concurrency key of a task not yet ended
K_TASK_LIMIT = PREFIX + "tasklimit"  # hash id -> that key's limit as the task's step declares it
K_KEY_LIMIT = PREFIX + "keylimit"  # hash key -> limit set at run time (PUT /keys/{key})
K_KEY_HELD = PREFIX + "keyheld:"  # set per key: ids holding one unit of it (dispatched or running)
K_KEY_WAIT = PREFIX + "keywait:"  # zset per key: queued ids waiting for it, scored in queue order
K_SCHEDULES = PREFIX + "schedules"  # hash schedule id -> the schedule record (JSON)
K_FIRED = PREFIX + "fired:"  # hash per schedule: occurrence -> task id
K_FIRED_ORDER = PREFIX + "firedorder:"  # zset per schedule: occurrence -> its epoch seconds

SEP = "|"


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


EVENT_SENTINEL = -7305620094812345  # replaced by the event id in the script that stores the record


def encode(task: Task) -> str:
    return dumps(task.to_dict())


def encode_for_feed(task: Task) -> str:
    """The record with ``event_id`` last and a sentinel value, for a script that assigns the id."""
    data = task.to_dict()
    data.pop("event_id", None)
    data["event_id"] = EVENT_SENTINEL
    return dumps(data)


def decode(raw: str | bytes) -> Task:
    return Task.from_dict(orjson.loads(raw))


def flat_deltas(counters: Counters) -> str:
    """The changes recorded on an empty Counters, as {field: delta} for HINCRBYFLOAT."""
    data = counters.data
    out: dict[str, float] = {}
    for step, states in data["now"].items():
        for status, n in states.items():
            out[SEP.join(("now", step, status))] = n
    for step, n in data["submitted"].items():
        out[SEP.join(("submitted", step))] = n
    for step, states in data["ended"].items():
        for status, n in states.items():
            out[SEP.join(("ended", step, status))] = n
    for worker, n in data["started_by"].items():
        out[SEP.join(("started_by", worker))] = n
    for hour, states in data.get("per_hour", {}).items():
        for status, n in states.items():
            out[SEP.join(("per_hour", hour, status))] = n
    hists = [(("durations", step), hist) for step, hist in data["durations"].items()]
    if data.get("queue_wait"):
        hists.append((("queue_wait",), data["queue_wait"]))
    for kind in ("step", "key"):
        hists += [((f"queue_wait_by_{kind}", name), hist) for name, hist in data.get(f"queue_wait_by_{kind}", {}).items()]
    for name, hist in hists:
        for index, n in enumerate(hist["buckets"]):
            if n:
                out[SEP.join((*name, f"b{index}"))] = n
        out[SEP.join((*name, "sum"))] = hist["sum"]
        out[SEP.join((*name, "count"))] = hist["count"]
    return dumps({k: v for k, v in out.items() if v})


def counters_from(fields: dict[str, str]) -> Counters:
    """The Counters document rebuilt from the flat hash."""
    counters = Counters()
    data = counters.data

    def hist(parent: dict[str, Any], key: str) -> dict[str, Any]:
        return parent.setdefault(key, {"buckets": [0] * (len(DURATION_BUCKETS) + 1), "sum": 0.0, "count": 0})

    oldest_hour = (time.time() // 3600 - HOURS_KEPT) * 3600
    for field, raw in fields.items():
        parts = field.split(SEP)
        value = float(raw)
        kind = parts[0]
        if kind in ("now", "ended") and len(parts) == 3:
            data[kind].setdefault(parts[1], {})[parts[2]] = int(value)
        elif kind in ("submitted", "started_by") and len(parts) == 2:
            data[kind][parts[1]] = int(value)
        elif kind == "per_hour" and len(parts) == 3:
            if parts[1].isdigit() and int(parts[1]) > oldest_hour:  # older ones wait for cleanup to drop them
                data.setdefault("per_hour", {}).setdefault(parts[1], {})[parts[2]] = int(value)
        elif kind in ("durations", "queue_wait", "queue_wait_by_step", "queue_wait_by_key"):
            if kind == "queue_wait":
                target = hist(data, "queue_wait")
            else:  # a key name may hold the separator: it is everything between the kind and the slot
                target = hist(data.setdefault(kind, {}) if kind != "durations" else data["durations"],
                              SEP.join(parts[1:-1]))
            slot = parts[-1]
            if slot == "sum":
                target["sum"] = value
            elif slot == "count":
                target["count"] = int(value)
            elif slot.startswith("b"):
                target["buckets"][int(slot[1:])] = int(value)
    return counters


def stale_hour_fields(fields: list[str]) -> list[str]:
    """Counter fields of hours older than the chart keeps (cleanup deletes them)."""
    oldest_hour = (time.time() // 3600 - HOURS_KEPT) * 3600
    stale = []
    for field in fields:
        parts = field.split(SEP)
        if parts[0] == "per_hour" and len(parts) == 3 and (not parts[1].isdigit() or int(parts[1]) <= oldest_hour):
            stale.append(field)
    return stale
