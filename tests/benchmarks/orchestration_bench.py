"""Orchestration figures: the overhead per pipeline node and how late schedules fire.

- node overhead: in a chain of diag_noop nodes, from the end of a node's task to the start of the
  next node's task (the pipeline's own cost per node: noticing the end, admitting the child);
- schedule lateness: an every-second schedule on a 4-worker server, from each occurrence's time to
  the moment its task was submitted (``schedule.late_seconds``), and to the task's start.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.task import parse_iso


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _chain(folder: Path, length: int) -> None:
    nodes = {f"n{i:02d}": {"step": "diag_noop", "params": {"i": i}, "depends_on": [f"n{i - 1:02d}"] if i else []}
             for i in range(length)}
    (folder / "chain.json").write_text(json.dumps({"name": "chain", "nodes": nodes}), encoding="utf-8")


def node_overhead(make: Callable[..., Any], runs: int = 5, length: int = 30) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="pipelines-"))
    _chain(folder, length)
    srv = make(Path(tempfile.mkdtemp(prefix="bench-")) / "task_storage", pipelines_dir=folder)
    gaps: list[float] = []
    totals: list[float] = []
    for _ in range(runs):
        task_id = srv.client.post("/pipelines/chain/run").json()["task_id"]
        final = srv.wait_for(task_id, timeout=120)
        assert final["status"] == "completed", final
        children = [srv.status(final["pipeline"]["nodes"][f"n{i:02d}"]["task_id"]) for i in range(length)]
        for before, after in zip(children, children[1:]):
            gaps.append(parse_iso(after["started_at"]) - parse_iso(before["completed_at"]))
        totals.append(parse_iso(final["completed_at"]) - parse_iso(final["started_at"]))
    srv.stop()
    note = f"{runs} runs of a {length}-node chain of diag_noop, 4 workers"
    return [
        {"figure": "pipeline node overhead p50", "value": _percentile(gaps, 0.5) * 1000, "unit": "ms", "note": note},
        {"figure": "pipeline node overhead p99", "value": _percentile(gaps, 0.99) * 1000, "unit": "ms", "note": note},
        {"figure": "pipeline of 30 no-op nodes, wall time p50", "value": _percentile(totals, 0.5), "unit": "s",
         "note": note},
    ]


def schedule_lateness(make: Callable[..., Any], seconds: int = 30) -> list[dict[str, Any]]:
    srv = make(Path(tempfile.mkdtemp(prefix="bench-")) / "task_storage", anonymous_role="admin")
    response = srv.client.post("/schedules", json={"id": "bench", "step": "diag_noop", "cron": "* * * * * *"})
    assert response.status_code == 201, response.text
    time.sleep(seconds)
    srv.client.post("/schedules/bench/pause")
    time.sleep(1)
    runs = srv.client.get("/schedules/bench/runs").json()["runs"]
    tasks = sorted((srv.wait_for(run["task_id"], timeout=30) for run in runs),
                   key=lambda t: t["schedule"]["occurrence"])
    first_late = tasks[0]["schedule"]["late_seconds"]
    # The first occurrence after the schedule was created waits for the firing worker's next loop
    # tick (it learns of new schedules there); it is reported on its own.
    tasks = tasks[1:]
    late = [t["schedule"]["late_seconds"] for t in tasks]
    to_start = [parse_iso(t["started_at"]) - parse_iso(t["schedule"]["occurrence"]) for t in tasks]
    srv.stop()
    note = f"every-second schedule for {seconds} s on 4 workers ({len(tasks)} occurrences)"
    return [
        {"figure": "schedule firing late p50", "value": _percentile(late, 0.5), "unit": "s", "note": note},
        {"figure": "schedule firing late p99", "value": _percentile(late, 0.99), "unit": "s", "note": note},
        {"figure": "schedule occurrence to task start p99", "value": _percentile(to_start, 0.99), "unit": "s",
         "note": note},
        {"figure": "schedule first occurrence after creation, late", "value": first_late, "unit": "s",
         "note": "found on the firing worker's next 0.2 s tick"},
    ]


def run(make: Callable[..., Any]) -> list[dict[str, Any]]:
    return node_overhead(make) + schedule_lateness(make)
