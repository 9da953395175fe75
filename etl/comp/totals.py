"""Control totals: what the report must tie out to (files read, rows and money per side, before and after
filters, matched and broken)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from etl import money

SRC_ONLY, TGT_ONLY = "src_only", "tgt_only"


def record_read(run_dir: Path, side: str, path: Path, rows: int) -> None:
    """Note which file a side read (the report lists it)."""
    (run_dir / f"{side}_read.json").write_text(json.dumps({"file": str(path), "raw_rows": rows}, ensure_ascii=False),
                                               encoding="utf-8")


def files_read(run_dir: Path, side: str) -> dict[str, Any]:
    path = run_dir / f"{side}_read.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _sum(frame: pd.DataFrame, column: str) -> Decimal | None:
    if column not in frame.columns:
        return None
    return money.total(money.to_decimal(frame[column]))


def control_totals(sides: dict[str, dict[str, Any]], results: pd.DataFrame, amounts: list[str]) -> pd.DataFrame:
    """One row per measure, one column per side (source, target): rows and money totals that tie out.

    ``sides`` maps src/tgt to {"name", "file", "before": frame before filters, "after": frame after}.
    """
    rows: list[dict[str, Any]] = []
    names = {side: info["name"] for side, info in sides.items()}

    def add(measure: str, values: dict[str, Any]) -> None:
        rows.append({"Measure": measure, **{names[side]: values.get(side) for side in sides}})

    add("File read", {side: Path(info["file"]).name if info.get("file") else None for side, info in sides.items()})
    add("Rows read", {side: info.get("raw_rows") for side, info in sides.items()})
    add("Rows before filters", {side: len(info["before"]) for side, info in sides.items()})
    add("Rows after filters", {side: len(info["after"]) for side, info in sides.items()})
    broken = results["break"].astype(bool).to_numpy()
    agreed = ~broken
    present = {"src": (results["status"] != TGT_ONLY).to_numpy(), "tgt": (results["status"] != SRC_ONLY).to_numpy()}
    suffix = {"src": "_src", "tgt": "_tgt"}
    add("Rows agreed (matched within tolerance)", {side: int((agreed & present[side]).sum()) for side in sides})
    add("Rows in breaks", {side: int((broken & present[side]).sum()) for side in sides})
    for column in amounts:
        add(f"{column}: total before filters", {side: _sum(info["before"], column) for side, info in sides.items()})
        add(f"{column}: total after filters", {side: _sum(info["after"], column) for side, info in sides.items()})
        for label, chosen in (("agreed", agreed), ("in breaks", broken)):
            add(f"{column}: total {label}", {side: _sum(results[chosen], f"{column}{suffix[side]}") for side in sides})
    return pd.DataFrame(rows)


def totals_json(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The control totals for a JSON result: money as text."""
    out = []
    for row in table.to_dict("records"):
        out.append({k: (money.json_text(v) if isinstance(v, Decimal) else v) for k, v in row.items()})
    return out
