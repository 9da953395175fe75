"""The task record: states, history, and its one dict form (shared by diskcache and the JSON file)."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from etl import secrets

TASK_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Parameter names whose values never leave the process in clear (files, audit): whole words of the
# name, so `passivo`, `Passivo Total`, `bypass`, `tokens` and `compass` are data, not secrets.
SECRET_WORDS = frozenset({"password", "passwd", "pass", "pwd", "senha", "secret", "token", "apikey", "credential",
                          "credentials", "privatekey"})
SECRET_WORD_PAIRS = frozenset({("api", "key"), ("private", "key")})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
MASK = "***"


class TaskStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.STOPPED)


def now_iso(at: float | None = None) -> str:
    """ISO-8601 with a UTC offset, millisecond precision."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


_id_lock = threading.Lock()
_last_stamp = 0


def new_task_id() -> str:
    """A UUIDv7 sorted by creation time, so the store lists newest first cheaply.

    The 12 bits after the millisecond hold its fraction (RFC 9562, method 3) and never repeat or
    go back within a process, so tasks created in the same millisecond keep their order too.
    """
    global _last_stamp
    nanos = time.time_ns()
    stamp = (nanos // 1_000_000) << 12 | (nanos % 1_000_000) * 4096 // 1_000_000
    with _id_lock:
        stamp = _last_stamp = max(stamp, _last_stamp + 1)
    rand = int.from_bytes(os.urandom(8), "big")
    value = ((stamp >> 12) & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (stamp & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def is_task_id(value: str) -> bool:
    return bool(TASK_ID_PATTERN.fullmatch(value))


def mask_pipeline(pipeline: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pipeline record with secret-looking run and node parameters masked (node names stay as they are)."""
    if not pipeline:
        return pipeline
    masked = {**pipeline, "run_parameters": mask_secrets(pipeline.get("run_parameters"))}
    definition = pipeline.get("definition")
    if isinstance(definition, dict):
        nodes = definition.get("nodes") if isinstance(definition.get("nodes"), dict) else {}
        masked["definition"] = {**definition, "parameters": mask_secrets(definition.get("parameters")),
                                "nodes": {name: {**node, "params": mask_secrets(node.get("params"))}
                                          if isinstance(node, dict) else node for name, node in nodes.items()}}
    return masked


def is_secret_name(name: str) -> bool:
    """Whether a parameter name says its value is a secret (``dbPassword``, ``api_key``, ``senha``)."""
    words = [w.lower() for w in _WORD.findall(name)]
    return any(w in SECRET_WORDS for w in words) or any(pair in SECRET_WORD_PAIRS for pair in zip(words, words[1:]))


def _mask_declared(value: Any) -> Any:
    # A value made only of ${secret:...} references holds no secret and tells support staff which one is used.
    if isinstance(value, str):
        only_references = secrets.REFERENCE.search(value) and not secrets.REFERENCE.sub("", value).strip()
        return value if only_references or not value else MASK
    if isinstance(value, list):
        return [_mask_declared(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_declared(v) for k, v in value.items()}
    return value


def _is_declared(path: tuple[str, ...], secret_fields: list[list[str]] | None) -> bool:
    return any(len(d) == len(path) and all(a in ("*", b) for a, b in zip(d, path)) for d in secret_fields or ())


def mask_secrets(value: Any, secret_fields: list[list[str]] | None = None, path: tuple[str, ...] = ()) -> Any:
    """Parameters as shown outside the process: declared secret fields and secret-named keys masked.

    For parameters only; results are never rewritten by key name (only resolved values are masked).
    """
    if _is_declared(path, secret_fields):
        return _mask_declared(value)
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and is_secret_name(k) and v not in (None, "")
                and not _is_declared((*path, k), secret_fields)
                else mask_secrets(v, secret_fields, (*path, str(k))))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v, secret_fields, (*path, str(i))) for i, v in enumerate(value)]
    return value


@dataclass
class Task:
    task_id: str
    step_name: str
    status: TaskStatus
    created_at: str
    params: dict[str, Any] = field(default_factory=dict)
    previous_outputs: dict[str, Any] = field(default_factory=dict)
    custom_params: dict[str, Any] = field(default_factory=dict)
    progress: float = 0.0
    message: str = ""
    started_at: str | None = None
    completed_at: str | None = None
    duration_seconds: float | None = None
    expires_at: str | None = None
    stop_requested: bool = False
    worker: dict[str, Any] | None = None
    attempt: int = 1
    result: Any = None
    error: dict[str, Any] | None = None
    log_file: str | None = None
    log_lines: int = 0
    log_tail: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    requested_by: dict[str, Any] | None = None
    stopped_by: dict[str, Any] | None = None
    idempotency_key: str | None = None
    idempotency_fingerprint: str | None = None
    queue_key: str | None = None
    secret_fields: list[list[str]] = field(default_factory=list)
    # Orchestration (api/orchestration): pipeline parent/child links, retries, schedules, dead letters.
    parent_id: str | None = None  # a pipeline node's child task: the pipeline task it belongs to
    node: str | None = None  # that child's node name in the pipeline
    pipeline: dict[str, Any] | None = None  # a pipeline task: {name, version, run_parameters, nodes, summary}
    retry: dict[str, Any] | None = None  # the retry policy this task runs under (retries.RetryPolicy)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # earlier attempts: {attempt, error, ended_at, ...}
    retry_due: str | None = None  # a queued retry waits until then, holding no slot
    retry_of: str | None = None  # this task re-runs that (failed) task
    retried_as: dict[str, Any] | None = None  # this failed task was re-run as {task_id, by, at}
    schedule: dict[str, Any] | None = None  # fired by {schedule_id, occurrence}
    concurrency: dict[str, Any] | None = None  # {key, limit, mode}: runs only while the key is below its limit
    dead_letter: dict[str, Any] | None = None  # {listed_at, dismissed_by, dismissed_at} once listed
    history: list[dict[str, Any]] = field(default_factory=list)
    rev: int = 0
    event_id: int = 0  # the id of the task's latest event in the store's change feed (GET /events)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose (asdict deep-copies): the dict is serialised at once, never kept.
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        values = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        values["status"] = TaskStatus(values["status"])
        return cls(**values)

    @classmethod
    def from_file(cls, data: Any) -> Task:
        """A record read from a task JSON file, checked field by field (ValueError naming the field).

        Files are the durable record and support staff may edit them; a wrong type here must
        not reach the index, where it would break /status or the start.
        """
        if not isinstance(data, dict):
            raise ValueError(f"the file holds a JSON {type(data).__name__}, not a task object")
        for name in ("task_id", "step_name", "status", "created_at"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"field {name!r} is missing or not text")
        if not is_task_id(data["task_id"]):
            raise ValueError("field 'task_id' is not a task id")
        try:
            status = TaskStatus(data["status"])
        except ValueError:
            raise ValueError(f"field 'status' is {data['status']!r}, not a task state") from None
        for name in ("created_at", "started_at", "completed_at", "expires_at"):
            value = data.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise ValueError(f"field {name!r} is not an ISO-8601 time")
                try:
                    parse_iso(value)
                except ValueError:
                    raise ValueError(f"field {name!r} is not an ISO-8601 time") from None
        if status.terminal and data.get("expires_at") is None:
            raise ValueError("an ended task needs 'expires_at'")
        worker = data.get("worker")
        if worker is not None and not (isinstance(worker, dict) and isinstance(worker.get("host"), str)
                                       and isinstance(worker.get("pid"), int) and isinstance(worker.get("id"), str)):
            raise ValueError("field 'worker' must be {id, host, pid} or null")
        error = data.get("error")
        if error is not None and not (isinstance(error, dict) and isinstance(error.get("type"), str)):
            raise ValueError("field 'error' must be {type, message, traceback} or null")
        kinds = {"params": dict, "previous_outputs": dict, "custom_params": dict, "history": list,
                 "log_tail": list, "artifacts": list, "progress": (int, float), "rev": int, "attempt": int,
                 "log_lines": int, "stop_requested": bool, "message": str, "error": dict,
                 "requested_by": dict, "stopped_by": dict, "duration_seconds": (int, float),
                 "idempotency_key": str, "idempotency_fingerprint": str, "log_file": str, "event_id": int,
                 "node": str, "pipeline": dict, "retry": dict, "attempts": list, "retried_as": dict,
                 "schedule": dict, "dead_letter": dict, "concurrency": dict}
        for name, kind in kinds.items():
            value = data.get(name)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ValueError(f"field {name!r} has the wrong type ({type(value).__name__})")
        if not all(isinstance(line, str) for line in data.get("log_tail") or []):
            raise ValueError("field 'log_tail' must be a list of text lines")
        if not all(isinstance(entry, dict) and isinstance(entry.get("status"), str) and isinstance(entry.get("at"), str)
                   for entry in data.get("history") or []):
            raise ValueError("field 'history' must be a list of {status, at, reason} objects")
        if not all(isinstance(entry, dict) for entry in data.get("attempts") or []):
            raise ValueError("field 'attempts' must be a list of objects")
        for name in ("parent_id", "retry_of"):
            value = data.get(name)
            if value is not None and not (isinstance(value, str) and is_task_id(value)):
                raise ValueError(f"field {name!r} is not a task id")
        due = data.get("retry_due")
        if due is not None:
            try:
                parse_iso(due)
            except (TypeError, ValueError):
                raise ValueError("field 'retry_due' is not an ISO-8601 time") from None
        nodes = (data.get("pipeline") or {}).get("nodes", {})
        if not isinstance(nodes, dict) or not all(isinstance(n, dict) and isinstance(n.get("state"), str)
                                                  for n in nodes.values()):
            raise ValueError("field 'pipeline.nodes' must map node names to {state, ...}")
        task = cls.from_dict(data)
        task.queue_key = None
        return task

    def expired(self, now: float | None = None) -> bool:
        return bool(self.expires_at) and parse_iso(self.expires_at) <= (time.time() if now is None else now)

    def transition(self, status: TaskStatus, reason: str, ttl_seconds: float, at: float | None = None) -> None:
        """Move to ``status``, stamping times and appending to history (terminal states are final)."""
        if self.status.terminal:
            raise ValueError(f"task {self.task_id} is {self.status.value}; it cannot become {status.value}")
        moment = time.time() if at is None else at
        stamp = now_iso(moment)
        self.status = status
        if status is TaskStatus.RUNNING:
            self.started_at = stamp
        if status.terminal:
            self.completed_at = stamp
            self.expires_at = now_iso(moment + ttl_seconds)
            if self.started_at:
                self.duration_seconds = round(moment - parse_iso(self.started_at), 3)
            if status is TaskStatus.COMPLETED:
                self.progress = 100.0
            self.queue_key = None
        self.history.append({"status": status.value, "at": stamp, "reason": reason})

    def file_view(self) -> dict[str, Any]:
        """What the JSON file holds for support staff: everything, secrets masked."""
        data = self.to_dict()
        data["params"] = mask_secrets(self.params, self.secret_fields)
        data["custom_params"] = mask_secrets(self.custom_params)
        data["previous_outputs"] = mask_secrets(self.previous_outputs)
        data["pipeline"] = mask_pipeline(self.pipeline)
        return data

    def status_view(self) -> dict[str, Any]:
        """The GET /status body."""
        duration = self.duration_seconds
        if self.status is TaskStatus.RUNNING and self.started_at:
            duration = round(time.time() - parse_iso(self.started_at), 3)
        view = {
            "task_id": self.task_id,
            "step_name": self.step_name,
            "status": self.status.value,
            "progress": round(self.progress, 1),
            "message": self.message,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "duration_seconds": duration,
            "expires_at": self.expires_at,
            "stop_requested": self.stop_requested,
            "worker": self.worker and {"host": self.worker["host"], "pid": self.worker["pid"]},
            "attempt": self.attempt,
            "error": self.error and {k: v for k, v in self.error.items() if k not in ("traceback", "kinds")},
            "log_tail": self.log_tail,
            "log_lines": self.log_lines,
            "artifacts": self.artifacts,
            "requested_by": self.requested_by,
            "stopped_by": self.stopped_by,
            "history": self.history,
        }
        for name in ("parent_id", "node", "pipeline", "retry_of", "retried_as", "schedule", "retry_due", "concurrency"):
            value = getattr(self, name)
            if value is not None:
                view[name] = value
        if self.pipeline is not None:
            view["pipeline"] = {k: v for k, v in mask_pipeline(self.pipeline).items() if k != "definition"}
        if self.attempts:
            view["attempts"] = self.attempts
        if self.status is TaskStatus.COMPLETED:
            view["output"] = self.result
        return view

    def summary_view(self) -> dict[str, Any]:
        """One row of GET /tasks."""
        return {
            "task_id": self.task_id,
            "step_name": self.step_name,
            "status": self.status.value,
            "progress": round(self.progress, 1),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "duration_seconds": self.duration_seconds,
            "error_type": self.error.get("type") if self.error else None,
            "attempt": self.attempt,
            "parent_id": self.parent_id,
            "node": self.node,
        }


_FIELDS = fields(Task)
_FIELD_NAMES = frozenset(f.name for f in _FIELDS)
