"""ETL benchmark: the completeness-control chain on generated 1M SRC vs 1M TGT rows (1% breaks),
Excel reading with calamine vs openpyxl, a 10k-row ODBC load, and portal browser/download times.

    .venv/bin/python -m tests.benchmarks.etl_bench [--rows 1000000]

Runs `python -m etl completeness_control_comp` in a child process and samples its memory, so the
figures are wall time and peak RSS of the whole chain as a task would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def bench_excel(folder: Path, rows: int = 100_000) -> list[dict[str, Any]]:
    """The same 100k x 8 workbook read by pandas with the calamine and the openpyxl engines."""
    import xlsxwriter

    path = folder / "read_bench.xlsx"
    book = xlsxwriter.Workbook(path, {"constant_memory": True})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["fund", "asset", "date", "quantity", "price", "value", "type", "note"])
    for r in range(1, rows + 1):
        sheet.write_row(r, 0, [f"F{r % 200:03d}", f"A{r}", f"{1 + r % 28:02d}/02/2026", r % 1000, 1.5 * r,
                               2.25 * r, "Renda Fixa", "—"])
    book.close()
    figures = []
    for engine in ("calamine", "openpyxl"):
        started = time.perf_counter()
        frame = pd.read_excel(path, engine=engine)
        took = time.perf_counter() - started
        assert len(frame) == rows
        figures.append({"figure": f"excel_read_{engine}_seconds", "value": took, "unit": "s",
                        "note": f"{rows:,} rows x 8 columns"})
    return figures


def bench_odbc(folder: Path, rows: int = 10_000) -> list[dict[str, Any]]:
    """A 10k-row load (delete the slice + insert, one transaction) through unixODBC + the SQLite driver."""
    from etl import odbc

    conn_str = f"DRIVER={{SQLite3}};Database={folder / 'load_bench.db'}"
    pyodbc = odbc.pyodbc_module()
    with pyodbc.connect(conn_str, autocommit=True) as connection:
        connection.execute("CREATE TABLE t (DATA_INPUT DATE, FUNDO TEXT, ATIVO TEXT, QUANTIDADE TEXT, VALOR TEXT)")
    import datetime as dt
    import decimal

    day = dt.date(2026, 2, 18)
    data = [(day, "AGROSAFRA", f"A{n}", decimal.Decimal(n), odbc.money(n * 1.2345)) for n in range(rows)]
    columns = ["DATA_INPUT", "FUNDO", "ATIVO", "QUANTIDADE", "VALOR"]
    figures = []
    for attempt in ("first", "replace"):
        result = odbc.load(conn_str, [odbc.TableLoad("t", columns, data)])
        figures.append({"figure": f"odbc_load_10k_{attempt}_rows_per_second", "value": result["rows_per_second"],
                        "unit": "rows/s", "note": f"{result['seconds']:.2f} s, deleted {result['deleted']:,}"})
    return figures


def bench_browser(folder: Path) -> list[dict[str, Any]]:
    """Headless Chromium against the test portal: browser start and per-download time (MAPS, 2 funds x 2 days)."""
    from etl import registry
    from tests.portal import USERS, Portal

    portal = Portal().start()
    saved = dict(os.environ)
    try:
        os.environ.update({"ETL_OUTPUT_DIR": str(folder / "portal-out"), "ETL_WORK_DIR": str(folder / "portal-runs"),
                           "ETL_BROWSER_ARGS": "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                           "ETL_PORTAL_MAPS_URL": portal.url("maps"), "ETL_SECRET_MAPS_USERNAME": USERS["maps"][0],
                           "ETL_SECRET_MAPS_PASSWORD": USERS["maps"][1]})
        step = registry.get_step("maps_download", False)
        result = step.run(step.params_model.model_validate(
            {"start": "2026-02-13", "end": "2026-02-18", "funds": ["AGROSAFRA", "CREDSP"]}))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        portal.stop()
    seconds = sorted(f["seconds"] for f in result["files"])
    return [
        {"figure": "browser_start_seconds", "value": result["browser_start_seconds"], "unit": "s",
         "note": "chromedriver + headless Chromium"},
        {"figure": "portal_download_p50_seconds", "value": seconds[len(seconds) // 2], "unit": "s",
         "note": f"{len(seconds)} MAPS files (xlsx + pdf), max {seconds[-1]:.2f} s"},
        {"figure": "portal_run_seconds", "value": result["seconds"], "unit": "s", "note": "login + 16 downloads"},
    ]


def run(rows: int = 1_000_000) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-etl-"))
    try:
        connectors = bench_excel(folder) + bench_odbc(folder) + bench_browser(folder)
        started = time.perf_counter()
        generate(folder, rows)
        generated = time.perf_counter() - started
        took, peak, result = run_chain(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # ~450 MB of generated inputs and outputs
    return [
        {"figure": "etl_generate_seconds", "value": generated, "unit": "s", "note": f"{rows:,} + {rows:,} rows"},
        {"figure": "etl_chain_seconds", "value": took, "unit": "s", "target": "<= 30",
         "note": f"{rows:,} vs {rows:,} rows, {result['break_count']:,} breaks"},
        {"figure": "etl_chain_peak_rss_mb", "value": peak / 1024 / 1024, "unit": "MB", "target": "<= 3072"},
        *connectors,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    for row in run(args.rows):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
