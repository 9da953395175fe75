"""Memory figures: the idle server's sum of PSS, and a worker's memory after many large tasks.

    .venv/bin/python -m tests.benchmarks.footprint [--rows 200000] [--runs 20]

PSS (proportional set size, /proc/<pid>/smaps_rollup) splits each shared page between the
processes that map it, so the sum over master and workers is what the server really costs; RSS
counts shared pages once per process. File-backed pages (the libraries' code) are split with every
process on the machine that maps the same files, so on a machine shared with other servers from the
same virtualenv the plain sum reads low; ``alone_mb`` estimates the server by itself: its anonymous
PSS (shared only within the fork family) plus the file-backed resident pages of the largest process.
Linux only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.server import Server


def memory_kb(pid: int) -> dict[str, int]:
    """Pss, Rss, Private_Dirty ... of ``pid`` in kB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[name] = int(parts[0])
    return values


def server_pss_mb(srv: Server) -> dict[str, Any]:
    pids = [srv.proc.pid, *srv.worker_pids()]
    memory = {pid: memory_kb(pid) for pid in pids}
    file_rss = max(m["Rss"] - m["Anonymous"] - m.get("Shmem", 0) for m in memory.values())
    return {"sum_pss_mb": sum(m["Pss"] for m in memory.values()) / 1024,
            "alone_mb": (sum(m["Pss_Anon"] for m in memory.values()) + file_rss) / 1024,
            "master_pss_mb": memory[pids[0]]["Pss"] / 1024,
            "worker_pss_mb": [round(memory[p]["Pss"] / 1024, 1) for p in pids[1:]],
            "worker_rss_mb": [round(memory[p]["Rss"] / 1024, 1) for p in pids[1:]]}


def idle(scratch: Path, settle_seconds: float = 5, **settings: Any) -> dict[str, Any]:
    """The sum of PSS of a freshly started server (4 workers unless ``workers`` says otherwise)."""
    srv = Server(Path(tempfile.mkdtemp(prefix="bench-idle-", dir=scratch)) / "task_storage", **settings)
    srv.start()
    try:
        time.sleep(settle_seconds)  # startup work (rebuild, first heartbeats) done
        return server_pss_mb(srv)
    finally:
        srv.stop()


def after_large_tasks(scratch: Path, rows: int, runs: int, **settings: Any) -> dict[str, Any]:
    """One worker runs the completeness-control chain on ``rows`` x ``rows`` generated rows ``runs`` times."""
    from tests.benchmarks import etl_bench

    data = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=scratch))
    etl_bench.generate(data, rows)
    settings.setdefault("workers", 1)
    srv = Server(data / "task_storage", input_dir=data, output_dir=data / "out", work_dir=data / "runs", **settings)
    srv.start()
    try:
        time.sleep(3)
        worker = srv.worker_pids()[0]
        idle_mb = memory_kb(worker)["Pss"] / 1024
        after, seconds = [], []
        for _ in range(runs):
            started = time.perf_counter()
            task = srv.run("completeness_control_comp")
            state = srv.wait_for(task["task_id"], timeout=600)
            assert state["status"] == "completed", state
            seconds.append(time.perf_counter() - started)
            time.sleep(3)  # the task's thread and file writer are done, the freed memory trimmed (every 1 s)
            after.append(memory_kb(worker)["Pss"] / 1024)
        return {"idle_mb": idle_mb, "after_first_mb": after[0], "after_last_mb": after[-1], "after_max_mb": max(after),
                "over_idle_mb": after[-1] - idle_mb, "growth_first_to_last_mb": after[-1] - after[0],
                "task_seconds_median": statistics.median(seconds), "rows": rows, "runs": runs}
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=["idle", "tasks"], choices=["idle", "tasks"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="etl-footprint-") as scratch:
        if "idle" in args.only:
            print(json.dumps({"idle": idle(Path(scratch))}), flush=True)
        if "tasks" in args.only:
            print(json.dumps({"after_large_tasks": after_large_tasks(Path(scratch), args.rows, args.runs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
