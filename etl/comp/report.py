"""The Excel report a person opens: Summary, Breaks, Unexplained, Matched sample."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from etl.datasets import replacing
from etl.writers import column_width, excel_format, excel_ready


def _sheet(writer: pd.ExcelWriter, frame: pd.DataFrame, name: str, formats: dict[str, Any]) -> None:
    excel_ready(frame).to_excel(writer, sheet_name=name, index=False, startrow=1, header=False)
    sheet = writer.sheets[name]
    for index, column in enumerate(frame.columns):
        sheet.write(0, index, str(column), formats["header"])
        kind = excel_format(frame[column])
        cell = writer.book.add_format(kind) if kind else None
        sheet.set_column(index, index, column_width(frame, column), cell)
    sheet.freeze_panes(1, 0)
    if len(frame.columns):
        sheet.autofilter(0, 0, max(len(frame), 1), len(frame.columns) - 1)


def write_report(path: Path, summary: list[tuple[str, Any]], by_category: pd.DataFrame, breaks: pd.DataFrame,
                 unexplained: pd.DataFrame, matched_sample: pd.DataFrame) -> Path:
    """Write the workbook atomically (temp file, then replace)."""
    with replacing(path) as tmp, pd.ExcelWriter(tmp, engine="xlsxwriter", datetime_format="dd/mm/yyyy",
                                                 date_format="dd/mm/yyyy") as writer:
        book = writer.book
        formats = {
            "header": book.add_format({"bold": True, "bg_color": "#1F4E78", "font_color": "#FFFFFF", "border": 1,
                                       "text_wrap": True, "valign": "top"}),
            "number": book.add_format({"num_format": "#,##0.00"}),
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
            if isinstance(value, (dt.date, dt.datetime)):
                sheet.write_datetime(row, 1, dt.datetime.combine(value, dt.time()) if not isinstance(value, dt.datetime)
                                     else value, formats["date"])
            else:
                sheet.write(row, 1, value)
        start = len(summary) + 4
        sheet.write(start, 0, "Breaks by category", formats["label"])
        for col, name in enumerate(by_category.columns):
            sheet.write(start + 1, col, name, formats["header"])
        for r, values in enumerate(by_category.itertuples(index=False), start=start + 2):
            for col, value in enumerate(values):
                sheet.write(r, col, value)
        sheet.set_column(0, 0, 34)
        sheet.set_column(1, 3, 22)
        _sheet(writer, breaks, "Breaks", formats)
        _sheet(writer, unexplained, "Unexplained", formats)
        _sheet(writer, matched_sample, "Matched sample", formats)
    return path
