"""The numbers /stats and /metrics report, kept as one small JSON document in the store.

It is read and written inside the same transaction as the change it counts, so it is exact and
shared by every worker, and reading it costs the same with 100 tasks stored as with 100,000.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

# Upper bounds (seconds) of the step-duration histogram buckets; the last bucket is +Inf.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
STATUSES = ("queued", "running", "completed", "failed", "stopped")
HOURS_KEPT = 48  # tasks ended per hour, for the dashboard's last-24-hours chart


def _histogram() -> dict[str, Any]:
    return {"buckets": [0] * (len(DURATION_BUCKETS) + 1), "sum": 0.0, "count": 0}


def _observe(hist: dict[str, Any], seconds: float) -> None:
    hist["buckets"][bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
    hist["sum"] += seconds
    hist["count"] += 1


class Counters:
    """Tasks stored now (by step and status), and running totals since the store was created."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data = data or {"now": {}, "submitted": {}, "ended": {}, "started_by": {}, "durations": {}}

    def moved(self, step: str, old: str | None, new: str | None) -> None:
        """A task of ``step`` left ``old`` (None: it is new) for ``new`` (None: it was removed)."""
        now = self.data["now"].setdefault(step, {})
        if old is not None:
            now[old] = now.get(old, 0) - 1
        if new is not None:
            now[new] = now.get(new, 0) + 1

    def submitted(self, step: str) -> None:
        self.data["submitted"][step] = self.data["submitted"].get(step, 0) + 1

    def started(self, worker: str, waited_seconds: float, step: str | None = None, key: str | None = None) -> None:
        """A task started on ``worker`` after waiting ``waited_seconds`` since it was accepted (or,
        for a retry, since its attempt joined the queue)."""
        self.data["started_by"][worker] = self.data["started_by"].get(worker, 0) + 1
        _observe(self.data.setdefault("queue_wait", _histogram()), waited_seconds)
        if step is not None:
            _observe(self.data.setdefault("queue_wait_by_step", {}).setdefault(step, _histogram()), waited_seconds)
        if key is not None:
            _observe(self.data.setdefault("queue_wait_by_key", {}).setdefault(key, _histogram()), waited_seconds)

    def queue_wait_quantile_of(self, kind: str, name: str, q: float) -> float | None:
        """Queue wait quantile of one step (kind "step") or concurrency key (kind "key")."""
        return _quantile(self.data.get(f"queue_wait_by_{kind}", {}).get(name), q)

    def ended(self, step: str, status: str, duration_seconds: float | None) -> None:
        ended = self.data["ended"].setdefault(step, {})
        ended[status] = ended.get(status, 0) + 1
        if status == "completed" and duration_seconds is not None:
            _observe(self.data["durations"].setdefault(step, _histogram()), duration_seconds)
        hours = self.data.setdefault("per_hour", {})
        hour = str(int(time.time() // 3600 * 3600))
        slot = hours.setdefault(hour, {})
        slot[status] = slot.get(status, 0) + 1
        if len(hours) > HOURS_KEPT:
            for old in sorted(hours, key=int)[:-HOURS_KEPT]:
                del hours[old]

    # --- reading -------------------------------------------------------------------------

    def by_status(self) -> dict[str, int]:
        totals = dict.fromkeys(STATUSES, 0)
        for states in self.data["now"].values():
            for status, n in states.items():
                totals[status] = totals.get(status, 0) + n
        return totals

    def by_step(self) -> dict[str, dict[str, int]]:
        return {step: {s: n for s, n in states.items() if n} for step, states in self.data["now"].items()
                if any(states.values())}

    def success_rate(self) -> float | None:
        completed = sum(s.get("completed", 0) for s in self.data["ended"].values())
        failed = sum(s.get("failed", 0) for s in self.data["ended"].values())
        return round(completed / (completed + failed), 4) if completed + failed else None

    def per_hour(self, hours: int = 24, now: float | None = None) -> list[dict[str, Any]]:
        """Tasks ended in each of the last ``hours`` hours (oldest first), by final status."""
        current = int((time.time() if now is None else now) // 3600 * 3600)
        kept = self.data.get("per_hour", {})
        return [{"hour": start, **{s: kept.get(str(start), {}).get(s, 0) for s in STATUSES[2:]}}
                for start in range(current - (hours - 1) * 3600, current + 1, 3600)]

    def queue_wait_quantile(self, q: float) -> float | None:
        return _quantile(self.data.get("queue_wait"), q)

    def duration_quantile(self, step: str, q: float) -> float | None:
        """Estimated from the histogram, interpolating inside the bucket (as Prometheus does)."""
        return _quantile(self.data["durations"].get(step), q)


def _quantile(hist: dict[str, Any] | None, q: float) -> float | None:
    """Estimated from the histogram, interpolating inside the bucket (as Prometheus does)."""
    if not hist or not hist["count"]:
        return None
    rank = q * hist["count"]
    seen = 0
    for index, n in enumerate(hist["buckets"]):
        if seen + n >= rank and n:
            low = DURATION_BUCKETS[index - 1] if index else 0.0
            if index == len(DURATION_BUCKETS):
                return low
            return round(low + (DURATION_BUCKETS[index] - low) * (rank - seen) / n, 4)
        seen += n
    return None
