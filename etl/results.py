"""What a step returns about a table: a JSON-ready preview, column types and exact money totals."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from etl import money

PREVIEW_ROWS = 20


def json_value(value: Any) -> Any:
    """A cell for a JSON result: money as text with its places ("150000.00"), floats without noise."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, Decimal):
        return money.json_text(value)
    if isinstance(value, float):
        return money.json_float(value)
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.strftime("%Y-%m-%d") if not isinstance(value, dt.datetime) or value.time() == dt.time() else value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def preview(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> dict[str, Any]:
    """v1's ``calculation_results``: headers and the first rows, JSON-ready."""
    head = frame.head(rows)
    return {
        "headers": [str(c) for c in head.columns],
        "table": [[json_value(v) for v in row] for row in head.itertuples(index=False, name=None)],
    }


def money_totals(frame: pd.DataFrame) -> dict[str, str]:
    """The exact total of every decimal column, as text."""
    return {str(c): money.json_text(money.total(frame[c])) for c in frame.columns if money.is_decimal(frame[c])}


def dataset_result(frame: pd.DataFrame, path: Path, **extra: Any) -> dict[str, Any]:
    return {"dataset": str(path), "row_count": int(len(frame)), "columns": [str(c) for c in frame.columns],
            "types": {str(c): type_name(frame[c]) for c in frame.columns}, "totals": money_totals(frame),
            "calculation_results": preview(frame), **extra}


def type_name(values: pd.Series) -> str:
    if money.is_decimal(values):
        return f"decimal({money.scale_of(values)})"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "date"
    if pd.api.types.is_bool_dtype(values):
        return "bool"
    if pd.api.types.is_integer_dtype(values):
        return "integer"
    if pd.api.types.is_float_dtype(values):
        return "float"
    return "text"
