"""Writing datasets out: Parquet, CSV (Brazilian conventions) and Excel, money without float noise; atomic."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl import money
from etl.datasets import replacing, write_parquet

MAX_COLUMN_WIDTH = 50


def write_csv(frame: pd.DataFrame, path: Path, decimal_mark: str = ",", thousands: str = "",
              places: dict[str, int] | None = None) -> Path:
    """A CSV as Brazilian tools expect it: ';', decimal comma, dd/mm/yyyy, UTF-8 with BOM; atomic.

    Money (decimal columns) is written with exactly two places ("150000,00"), ties rounded half up;
    ``places`` gives other columns (rates, quotas) their own. Floats are rounded so no binary noise
    shows. Written with pyarrow's C++ writer (pandas' to_csv took ~15 s per million rows).
    """
    places = places or {}
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    columns = {}
    for name in frame.columns:
        values = frame[name]
        if money.is_decimal(values):
            columns[str(name)] = pa.array(money.to_text(values, decimal_mark, thousands, places.get(
                str(name), money.MONEY_SCALE)), from_pandas=True)
        elif pd.api.types.is_float_dtype(values):
            columns[str(name)] = pa.array(money.to_text(values, decimal_mark, thousands), from_pandas=True)
        elif pd.api.types.is_datetime64_any_dtype(values):
            columns[str(name)] = pc.strftime(pa.array(values, from_pandas=True), format="%d/%m/%Y")
        else:
            columns[str(name)] = pa.array(values.astype("string"), from_pandas=True)
    table = pa.table(columns)
    separator = ";" if decimal_mark == "," else ","
    with replacing(path) as tmp, open(tmp, "wb") as out:
        out.write(b"\xef\xbb\xbf")
        pacsv.write_csv(table, out, pacsv.WriteOptions(delimiter=separator, quoting_style="needed"))
    return path


def excel_format(values: pd.Series) -> dict[str, Any] | None:
    """The xlsxwriter number format of a column: money #,##0.00, dates dd/mm/yyyy, none for text."""
    if money.is_decimal(values):
        places = money.scale_of(values)
        return {"num_format": "#,##0" + ("." + "0" * places if places else "")}
    if pd.api.types.is_datetime64_any_dtype(values):
        return {"num_format": "dd/mm/yyyy"}
    if pd.api.types.is_float_dtype(values):
        return {"num_format": "#,##0.00########"}
    if pd.api.types.is_integer_dtype(values):
        return {"num_format": "0"}
    return None


def _cells(values: pd.Series) -> list[Any]:
    """A column as the Python values xlsxwriter writes: no float noise, NA as blank.

    Decimals go as they are: xlsxwriter writes their text, where a double would be written with
    16 digits (82181.46 as 82181.46000000001); floats are rounded and written the same way.
    """
    if money.is_decimal(values):
        return [None if v is pd.NA else v for v in values.array]
    if pd.api.types.is_datetime64_any_dtype(values):
        return [None if v is pd.NaT else v.to_pydatetime() for v in values]
    if pd.api.types.is_float_dtype(values):
        return [None if v != v else Decimal(repr(round(v, money.FLOAT_PLACES)))
                for v in values.to_numpy(dtype="float64", na_value=float("nan"))]
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        return [None if v is pd.NA else (bool(v) if isinstance(v, (bool, np.bool_)) else int(v))
                for v in values.astype(object)]
    return [None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else
            (v if isinstance(v, (str, int, Decimal)) else str(v)) for v in values.astype(object)]


def write_frame(book: Any, sheet: Any, frame: pd.DataFrame, header: Any = None, startrow: int = 0) -> None:
    """A table on a sheet, column by column (pandas' to_excel costs ~4x per cell): a header row, money
    as #,##0.00, dates dd/mm/yyyy, widths fitted to the values, frozen header and a filter."""
    formats: dict[str, Any] = {}
    for index, column in enumerate(frame.columns):
        sheet.write(startrow, index, str(column), header)
        kind = excel_format(frame[column])
        key = str(kind)
        if kind and key not in formats:
            formats[key] = book.add_format(kind)
        cell = formats.get(key) if kind else None
        sheet.write_column(startrow + 1, index, _cells(frame[column]), cell)
        sheet.set_column(index, index, column_width(frame, column), cell)
    sheet.freeze_panes(startrow + 1, 0)
    if len(frame.columns):
        sheet.autofilter(startrow, 0, startrow + max(len(frame), 1), len(frame.columns) - 1)


def column_width(frame: pd.DataFrame, column: Any) -> int:
    values = frame[column]
    sample = (money.to_text(values.head(200), ",", ".") if money.is_decimal(values) else
              values.head(200).astype("string")).fillna("")
    return min(MAX_COLUMN_WIDTH, max([len(str(column))] + [len(v) for v in sample]) + 2)


def write_excel(frame: pd.DataFrame, path: Path, sheet_name: str = "data") -> Path:
    """One sheet with a bold header, money and date formats, widths fitted to the values; atomic."""
    import xlsxwriter

    with replacing(path) as tmp:
        book = xlsxwriter.Workbook(tmp, {"nan_inf_to_errors": True})
        write_frame(book, book.add_worksheet(sheet_name), frame, book.add_format({"bold": True}))
        book.close()
    return path


__all__ = ["column_width", "excel_format", "write_csv", "write_excel", "write_frame", "write_parquet"]
