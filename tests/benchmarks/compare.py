"""Side by side in one run: the service against the Celery peer (or against itself with other settings).

    .venv/bin/python -m tests.benchmarks.compare [--pairs 5] [--peer celery|service]
        [--ours-set KEY=VALUE ...] [--peer-set KEY=VALUE ...]

Each pair measures every figure on both sides, the order flipping from pair to pair, so a noisy
neighbour on a shared machine hits both; the table shows each side's median and range and the
median and range of the per-pair ratio (ours / peer). ``KEY=VALUE`` sets a service setting
(``workers=2``, ``worker_class=asgi``), as ``gunicorn_args=...`` Gunicorn's own command-line
options through GUNICORN_CMD_ARGS (``gunicorn_args=--backlog=512``), or as ``env.NAME=...`` any
environment variable of the server (``env.MALLOC_ARENA_MAX=2``); ``root=FOLDER`` runs the service
from another checkout (``git archive <commit> | tar -x -C FOLDER``: before vs after a change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from tests.benchmarks import measure as bench
from tests.benchmarks.peer import Peer
from tests.server import Server

# figure -> (unit, which way is better, target for ours / peer or for ours alone)
FIGURES = {
    "roundtrip_p50_ms": ("ms", "lower", "ratio <= 0.8"),
    "roundtrip_p99_ms": ("ms", "lower", "ours <= 10 ms"),
    "burst_tasks_per_second": ("tasks/s", "higher", "ratio >= 1.2"),
    "burst_cpu_ms_per_task": ("ms", "lower", ""),
    "status_rps": ("req/s", "higher", ""),
    "livez_rps": ("req/s", "higher", ""),
    "status_vs_livez": ("ratio", "higher", "ours >= 0.8"),
}


class Side(Protocol):
    label: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def roundtrip(self, rounds: int) -> list[float]: ...
    def burst(self, total: int, clients: int) -> dict[str, Any]: ...
    def status_rate(self, seconds: int) -> dict[str, float] | None: ...


class ServiceSide:
    """A 4-worker Gunicorn (by default) with its own storage; ``settings`` as for tests.server.Server."""

    def __init__(self, scratch: Path, settings: dict[str, str]) -> None:
        settings = dict(settings)
        self.gunicorn_args = settings.pop("gunicorn_args", "")
        self.env = {k[4:]: settings.pop(k) for k in list(settings) if k.startswith("env.")}
        self.settings: dict[str, Any] = {k: int(v) if k == "workers" else Path(v) if k == "root" else v
                                         for k, v in settings.items()}
        self.label = "service" + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")
        if self.gunicorn_args:
            self.label += f" [{self.gunicorn_args}]"
        if self.env:
            self.label += f" [{' '.join(f'{k}={v}' for k, v in self.env.items())}]"
        self.storage = Path(tempfile.mkdtemp(prefix="bench-compare-", dir=scratch)) / "task_storage"
        self.srv: Server | None = None

    def start(self) -> None:
        self.srv = Server(self.storage, **self.settings)
        if self.gunicorn_args:
            self.srv.env["GUNICORN_CMD_ARGS"] = self.gunicorn_args
        self.srv.env.update(self.env)
        self.srv.start()

    def stop(self) -> None:
        if self.srv is not None:
            self.srv.stop()

    def roundtrip(self, rounds: int) -> list[float]:
        return bench.roundtrip_samples(self.srv.port, rounds)

    def burst(self, total: int, clients: int) -> dict[str, Any]:
        return bench.burst(self.srv, total, clients)

    def status_rate(self, seconds: int) -> dict[str, float] | None:
        return bench.status_rate(self.srv, seconds)


class CelerySide:
    label = "celery 5.7 + redis 7 (prefork 2, -O fair, prefetch 1)"

    def __init__(self) -> None:
        self.peer = Peer()

    def start(self) -> None:
        self.peer.start()

    def stop(self) -> None:
        self.peer.stop()

    def roundtrip(self, rounds: int) -> list[float]:
        return self.peer.roundtrip(rounds)

    def burst(self, total: int, clients: int) -> dict[str, Any]:
        return self.peer.burst(total, clients)

    def status_rate(self, seconds: int) -> dict[str, float] | None:
        return self.peer.status_rate(seconds)


def measure(side: Side, figure: str, args: argparse.Namespace) -> dict[str, float]:
    if figure == "roundtrip":
        samples = side.roundtrip(args.rounds)
        return {"roundtrip_p50_ms": bench.percentile(samples, 0.5), "roundtrip_p99_ms": bench.percentile(samples, 0.99)}
    if figure == "burst":
        result = side.burst(args.burst, args.clients)
        return {"burst_tasks_per_second": result["tasks_per_second"], "burst_cpu_ms_per_task": result["cpu_ms_per_task"]}
    rates = side.status_rate(args.wrk_seconds)
    if rates is None:
        return {}
    return {"status_rps": rates["status_rps"], "livez_rps": rates["livez_rps"], "status_vs_livez": rates["ratio"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def alternate(ours: Side, peer: Side, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.pairs`` pairs of every figure, ours first in even pairs and the peer first in odd ones."""
    values: dict[str, dict[str, list[float]]] = {name: {"ours": [], "peer": [], "ratio": []} for name in FIGURES}
    for pair in range(args.pairs):
        order = [("ours", ours), ("peer", peer)] if pair % 2 == 0 else [("peer", peer), ("ours", ours)]
        for figure in args.figures:
            got = {who: measure(side, figure, args) for who, side in order}
            for name, value in got["ours"].items():
                if name in got["peer"]:
                    values[name]["ours"].append(value)
                    values[name]["peer"].append(got["peer"][name])
                    values[name]["ratio"].append(value / got["peer"][name])
        print(json.dumps({"pair": pair + 1, "of": args.pairs}), file=sys.stderr, flush=True)
    rows = []
    for name, (unit, better, target) in FIGURES.items():
        if values[name]["ours"]:
            rows.append({"figure": name, "unit": unit, "better": better, "target": target, "pairs": args.pairs,
                         **{who: spread(v) for who, v in values[name].items()}})
    return rows


def table(rows: list[dict[str, Any]], ours: str, peer: str) -> str:
    def cell(s: dict[str, float]) -> str:
        digits = 2 if s["median"] < 100 else 0
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    lines = [f"ours: {ours}", f"peer: {peer}", "",
             f"{'figure':24} {'unit':8} {'ours median (range)':26} {'peer median (range)':26} "
             f"{'ours/peer median (range)':26} target"]
    for row in rows:
        lines.append(f"{row['figure']:24} {row['unit']:8} {cell(row['ours']):26} {cell(row['peer']):26} "
                     f"{cell(row['ratio']):26} {row['target']}")
    return "\n".join(lines)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        settings[key] = value
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=5, help="alternating repetitions (>= 5 for the README)")
    parser.add_argument("--rounds", type=int, default=300, help="round trips per repetition")
    parser.add_argument("--burst", type=int, default=1000, help="tasks per burst")
    parser.add_argument("--clients", type=int, default=16, help="client threads of the burst")
    parser.add_argument("--wrk-seconds", type=int, default=3, help="seconds per wrk run of the status figure")
    parser.add_argument("--figures", nargs="*", default=["roundtrip", "burst", "status"],
                        choices=["roundtrip", "burst", "status"])


def run(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    ours: Side = ServiceSide(scratch, parse_settings(getattr(args, "ours_set", None) or []))
    peer: Side = (CelerySide() if getattr(args, "peer", "celery") == "celery"
                  else ServiceSide(scratch, parse_settings(getattr(args, "peer_set", None) or [])))
    started: list[Side] = []
    try:
        for side in (ours, peer):
            side.start()
            started.append(side)
        rows = alternate(ours, peer, args)
    finally:
        for side in started:
            side.stop()
    for row in rows:
        row["ours_label"], row["peer_label"] = ours.label, peer.label
    print(table(rows, ours.label, peer.label), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--peer", default="celery", choices=["celery", "service"])
    parser.add_argument("--ours-set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--peer-set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="etl-compare-") as scratch:
        rows = run(args, Path(scratch))
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"\n{args.pairs} pairs in {time.time() - started:.0f} s on {__import__('os').cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
