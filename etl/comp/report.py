"""The Excel report a person opens: Summary, Breaks, Unexplained, Matched sample."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl.datasets import replacing
from etl.writers import write_frame


def _sheet(writer: pd.ExcelWriter, frame: pd.DataFrame, name: str, formats: dict[str, Any]) -> None:
    sheet = writer.book.add_worksheet(name)
    writer.sheets[name] = sheet
    write_frame(writer.book, sheet, frame, formats["header"])


def _cell(sheet: Any, row: int, col: int, value: Any, formats: dict[str, Any]) -> None:
    """One Summary cell: money with #,##0.00, dates dd/mm/yyyy, blanks for missing values."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        sheet.write_blank(row, col, None)
    elif isinstance(value, Decimal):
        sheet.write_number(row, col, value, formats["money"])  # its text, not a 16-digit double
    elif isinstance(value, (dt.date, dt.datetime)):
        sheet.write_datetime(row, col, value if isinstance(value, dt.datetime) else
                             dt.datetime.combine(value, dt.time()), formats["date"])
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        sheet.write_number(row, col, int(value), formats["integer"])
    else:
        sheet.write(row, col, value)


def _table(sheet: Any, start: int, title: str, frame: pd.DataFrame, formats: dict[str, Any]) -> int:
    """A titled table on the Summary sheet; the row after it."""
    sheet.write(start, 0, title, formats["label"])
    for col, name in enumerate(frame.columns):
        sheet.write(start + 1, col, str(name), formats["header"])
    row = start + 2
    for row, values in enumerate(frame.itertuples(index=False), start=start + 2):
        for col, value in enumerate(values):
            _cell(sheet, row, col, value, formats)
    return max(row, start + 1) + 2


def write_report(path: Path, summary: list[tuple[str, Any]], control_totals: pd.DataFrame, by_category: pd.DataFrame,
                 breaks: pd.DataFrame, unexplained: pd.DataFrame, matched_sample: pd.DataFrame) -> Path:
    """Write the workbook atomically (temp file, then replace): Summary (with control totals and a chart of
    breaks by category), Breaks, Unexplained, Matched sample."""
    with replacing(path) as tmp, pd.ExcelWriter(tmp, engine="xlsxwriter", datetime_format="dd/mm/yyyy",
                                                 date_format="dd/mm/yyyy") as writer:
        book = writer.book
        formats = {
            "header": book.add_format({"bold": True, "bg_color": "#1F4E78", "font_color": "#FFFFFF", "border": 1,
                                       "text_wrap": True, "valign": "top"}),
            "money": book.add_format({"num_format": "#,##0.00"}),
            "integer": book.add_format({"num_format": "#,##0"}),
            "date": book.add_format({"num_format": "dd/mm/yyyy"}),
            "title": book.add_format({"bold": True, "font_size": 14}),
            "label": book.add_format({"bold": True}),
        }
        sheet = book.add_worksheet("Summary")
        writer.sheets["Summary"] = sheet
        sheet.write(0, 0, "Completeness control", formats["title"])
        for row, (label, value) in enumerate(summary, start=2):
            sheet.write(row, 0, label, formats["label"])
            _cell(sheet, row, 1, value, formats)
        start = _table(sheet, len(summary) + 3, "Control totals (tie these to the files)", control_totals, formats)
        start = _table(sheet, start, "Breaks by category", by_category, formats)
        per_category = (by_category.groupby("category", dropna=False)["breaks"].sum().reset_index()
                        if len(by_category) else pd.DataFrame(columns=["category", "breaks"]))
        if len(per_category):
            first = start + 1
            end = _table(sheet, start, "Breaks per category (chart data)", per_category, formats)
            chart = book.add_chart({"type": "bar"})
            chart.add_series({"name": "Breaks", "categories": ["Summary", first + 1, 0, first + len(per_category), 0],
                              "values": ["Summary", first + 1, 1, first + len(per_category), 1],
                              "data_labels": {"value": True}, "fill": {"color": "#1F4E78"}})
            chart.set_title({"name": "Breaks by category"})
            chart.set_legend({"none": True})
            chart.set_size({"width": 520, "height": 60 + 28 * len(per_category)})
            sheet.insert_chart(end, 0, chart)
        sheet.set_column(0, 0, 40)
        sheet.set_column(1, max(3, len(control_totals.columns) - 1), 24)
        _sheet(writer, breaks, "Breaks", formats)
        _sheet(writer, unexplained, "Unexplained", formats)
        _sheet(writer, matched_sample, "Matched sample", formats)
    return path
