"""What the back-office steps share: Windows-safe names, mapping-workbook sheets, output folders, and
formatted Excel reports."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from etl import datasets, runtime
from etl.errors import EtlError

MONTHS = ("Janeiro", "Fevereiro", "Março", "Abril", "Maio", "Junho", "Julho", "Agosto", "Setembro", "Outubro",
          "Novembro", "Dezembro")
SAFE_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def safe_name(name: str) -> str:
    """A folder or file name valid on Windows and Linux."""
    return SAFE_NAME.sub("_", name).strip(" .") or "_"


def read_sheet(path: Path, name: str) -> pd.DataFrame:
    """A mapping-workbook sheet as text, header on the first row."""
    from python_calamine import CalamineWorkbook

    try:
        book = CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # calamine raises its own types for damaged files
        raise EtlError(f"cannot read {path.name}: {exc}") from None
    if name not in book.sheet_names:
        raise EtlError(f"{path.name} has no sheet {name!r} (it has: {', '.join(book.sheet_names)})")
    rows = book.get_sheet_by_name(name).to_python()
    if not rows:
        return pd.DataFrame()
    header = [str(v).strip() for v in rows[0]]
    return pd.DataFrame([[("" if v is None else str(v).strip()) for v in r] for r in rows[1:]], columns=header)


def output_folder(*parts: str) -> Path:
    """A folder under ETL_OUTPUT_DIR, created if missing."""
    path = runtime.output_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_workbook(path: Path, sheets: dict[str, pd.DataFrame]) -> None:
    """One sheet per frame, header frozen and filtered, written whole or not at all."""
    with datasets.replacing(path) as tmp, pd.ExcelWriter(tmp, engine="xlsxwriter", datetime_format="dd/mm/yyyy",
                                                          date_format="dd/mm/yyyy") as writer:
        for name, frame in sheets.items():
            sheet_name = safe_name(name)[:31]
            frame.to_excel(writer, sheet_name=sheet_name, index=False)
            sheet = writer.sheets[sheet_name]
            sheet.freeze_panes(1, 0)
            sheet.autofilter(0, 0, max(len(frame), 1), max(len(frame.columns) - 1, 0))
            for i, column in enumerate(frame.columns):
                sheet.set_column(i, i, min(max(len(str(column)), 12) + 2, 45))
