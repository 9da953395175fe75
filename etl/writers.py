"""Writing datasets out: Parquet, CSV (Brazilian conventions) and Excel, money without float noise; atomic."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from etl import money
from etl.datasets import replacing, write_parquet

MAX_COLUMN_WIDTH = 50


def write_csv(frame: pd.DataFrame, path: Path, decimal_mark: str = ",", thousands: str = "") -> Path:
    """A CSV as Brazilian tools expect it: ';', decimal comma, dd/mm/yyyy, UTF-8 with BOM; atomic.

    Money (decimal columns) is written with all its places ("150000,00"), floats rounded so no
    binary noise shows. Written with pyarrow's C++ writer (pandas' to_csv took ~15 s per million rows).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    columns = {}
    for name in frame.columns:
        values = frame[name]
        if money.is_decimal(values) or pd.api.types.is_float_dtype(values):
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


def excel_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells xlsxwriter writes as numbers without float noise (decimals and rounded floats as text), NA as blank."""
    frame = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if money.is_decimal(values):
            # Decimals go to xlsxwriter as they are: it writes their text, where a double would be written
            # with 16 digits (82181.46 as 82181.46000000001).
            frame[column] = values.astype(object).where(values.notna(), None)
        elif pd.api.types.is_float_dtype(values):
            frame[column] = pd.Series([None if v != v else Decimal(repr(round(v, money.FLOAT_PLACES)))
                                       for v in values.to_numpy(dtype="float64", na_value=float("nan"))],
                                      index=values.index, dtype=object)
        elif isinstance(values.dtype, (pd.StringDtype, pd.ArrowDtype)) or values.dtype == "bool":
            frame[column] = values.astype(object).where(values.notna(), None)
    return frame


def column_width(frame: pd.DataFrame, column: Any) -> int:
    values = frame[column]
    sample = (money.to_text(values.head(200), ",", ".") if money.is_decimal(values) else
              values.head(200).astype("string")).fillna("")
    return min(MAX_COLUMN_WIDTH, max([len(str(column))] + [len(v) for v in sample]) + 2)


def write_excel(frame: pd.DataFrame, path: Path, sheet_name: str = "data") -> Path:
    """One sheet with a bold header, money and date formats, widths fitted to the values; atomic."""
    with replacing(path) as tmp, pd.ExcelWriter(tmp, engine="xlsxwriter", datetime_format="dd/mm/yyyy") as writer:
        excel_ready(frame).to_excel(writer, index=False, sheet_name=sheet_name)
        sheet = writer.sheets[sheet_name]
        for index, column in enumerate(frame.columns):
            kind = excel_format(frame[column])
            sheet.set_column(index, index, column_width(frame, column),
                             writer.book.add_format(kind) if kind else None)
        sheet.freeze_panes(1, 0)
        sheet.autofilter(0, 0, max(len(frame), 1), max(len(frame.columns) - 1, 0))
    return path


__all__ = ["column_width", "excel_format", "excel_ready", "write_csv", "write_excel", "write_parquet"]
