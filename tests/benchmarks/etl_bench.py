"""ETL benchmark: the completeness-control chain on generated 1M SRC vs 1M TGT rows (1% breaks).

    .venv/bin/python -m tests.benchmarks.etl_bench [--rows 1000000]

Runs `python -m etl completeness_control_comp` in a child process and samples its memory, so the
figures are wall time and peak RSS of the whole chain as a task would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from tests.server import ROOT

RUN_DATE = "2026-02-18"


def _brazilian(values: np.ndarray) -> pd.Series:
    text = pd.Series(values).map("{:.2f}".format)
    return text.str.replace(".", ",", regex=False)


def generate(folder: Path, rows: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    funds = np.array([f"{n:014d}" for n in rng.integers(10**12, 10**13, 200)])
    fund = funds[rng.integers(0, len(funds), rows)]
    asset = np.char.add("A", np.arange(rows).astype(str))
    quantity = rng.integers(1, 100_000, rows).astype(float)
    value = np.round(quantity * rng.uniform(1, 500, rows), 2)
    src = pd.DataFrame({"fund": fund, "asset": asset, "quantity": _brazilian(quantity), "value": _brazilian(value)})
    tgt_value = value.copy()
    breaks = rng.choice(rows, rows // 100, replace=False)
    third = len(breaks) // 3
    tgt_value[breaks[:third]] += 100.0  # beyond tolerance
    keep = np.ones(rows, dtype=bool)
    keep[breaks[third:2 * third]] = False  # missing in target
    tgt = pd.DataFrame({"fund": fund, "asset": asset, "quantity": _brazilian(quantity),
                        "value": _brazilian(tgt_value)})[keep]
    extra = pd.DataFrame({"fund": funds[0], "asset": np.char.add("X", np.arange(len(breaks) - 2 * third).astype(str)),
                          "quantity": "1,00", "value": "1,00"})  # missing in source
    tgt = pd.concat([tgt, extra], ignore_index=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    src.to_csv(folder / "data" / "src_20260218.csv", sep=";", index=False, encoding="latin-1")
    tgt.to_csv(folder / "data" / "tgt_20260218.csv", sep=";", index=False, encoding="latin-1")
    types = {"fund": "text", "asset": "text", "quantity": "number", "value": "number"}
    side = {"format": "csv", "harmonisation": {"types": types}}
    config = {
        "control": "bench", "default_run_date": RUN_DATE,
        "source": {"name": "SRC", "path": "data/src_{yyyymmdd}.csv", **side},
        "target": {"name": "TGT", "path": "data/tgt_{yyyymmdd}.csv", **side},
        "keys": ["fund", "asset"],
        "compare": [{"column": "quantity"}, {"column": "value", "abs_tolerance": 0.01}],
        "rules": [{"name": "small", "when": "abs(diff_value) < 1", "category": "Rounding"}],
        "output": {"matched_sample_rows": 1000},
    }
    (folder / "controls").mkdir(exist_ok=True)
    (folder / "controls" / "bench.json").write_text(json.dumps(config), encoding="utf-8")


def run_chain(folder: Path) -> tuple[float, int, dict[str, Any]]:
    env = {**os.environ, "ETL_INPUT_DIR": str(folder), "ETL_OUTPUT_DIR": str(folder / "out"),
           "ETL_WORK_DIR": str(folder / "runs")}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "etl", "completeness_control_comp"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    output = child.stdout.read() if child.stdout else b""
    took = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"the chain failed with status {child.returncode}")
    return took, peak, json.loads(output)


def run(rows: int = 1_000_000) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-etl-"))
    started = time.perf_counter()
    generate(folder, rows)
    generated = time.perf_counter() - started
    took, peak, result = run_chain(folder)
    return [
        {"figure": "etl_generate_seconds", "value": generated, "unit": "s", "note": f"{rows:,} + {rows:,} rows"},
        {"figure": "etl_chain_seconds", "value": took, "unit": "s", "target": "<= 30",
         "note": f"{rows:,} vs {rows:,} rows, {result['break_count']:,} breaks"},
        {"figure": "etl_chain_peak_rss_mb", "value": peak / 1024 / 1024, "unit": "MB", "target": "<= 3072"},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    for row in run(args.rows):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
