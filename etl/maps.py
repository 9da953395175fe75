"""MAPS "Composição" / "Posição" workbooks: a header block, then sections titled in column A.

Each section is a title row ("Renda Fixa"), a header row, data rows, and a "Total" row that ends
it ("Subtotal" rows inside are skipped). "—" means zero. Fund and date come from the file name.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from etl.brazil import parse_number
from etl.datasets import unique_names
from etl.errors import EtlError

FILE_NAME = re.compile(r"^(?P<kind>Composi[cç][aã]o|Posi[cç][aã]o)_(?P<fund>.+?)_(?P<date>\d{8})\.xlsx$", re.I)
KNOWN_SECTIONS = ("Renda Fixa", "Renda Variável", "Cotas de Fundos", "Caixa", "Valores a Receber", "Valores a Pagar",
                  "Rentabilidade (%)", "Compromissadas", "Derivativos")
DASHES = {"—", "–", "-", "--"}


class MapsError(EtlError):
    """A MAPS workbook could not be read."""


@dataclass
class MapsWorkbook:
    path: Path
    kind: str
    fund: str
    day: dt.date
    net_assets: float | None = None
    sections: dict[str, pd.DataFrame] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)


def plain(text: str) -> str:
    """Lower case without accents: how labels are compared."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower().strip()


def parse_name(path: Path) -> tuple[str, str, dt.date]:
    match = FILE_NAME.match(path.name)
    if not match:
        raise MapsError(f"{path.name}: expected a name like Composicao_<FUNDO>_<yyyymmdd>.xlsx")
    kind = "Composicao" if plain(match["kind"]).startswith("composi") else "Posicao"
    try:
        day = dt.datetime.strptime(match["date"], "%Y%m%d").date()
    except ValueError:
        raise MapsError(f"{path.name}: {match['date']} is not a date") from None
    return kind, match["fund"], day


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _is_title(row: list[Any], next_row: list[Any] | None) -> bool:
    first = _text(row[0]) if row else ""
    if not first or any(_text(v) for v in row[1:]):
        return False
    if plain(first) in {plain(s) for s in KNOWN_SECTIONS}:
        return True
    headers = [v for v in (next_row or []) if isinstance(v, str) and v.strip()]
    return len(headers) >= 2 and not plain(first).startswith(("total", "subtotal"))


def _column(values: list[Any]) -> pd.Series:
    """A section column: numbers (with "—" as zero) when every filled cell is one, else text."""
    filled = [v for v in values if _text(v)]
    numeric = [v for v in filled if isinstance(v, int | float) and not isinstance(v, bool)]
    dashes = [v for v in filled if isinstance(v, str) and v.strip() in DASHES]
    if filled and len(numeric) + len(dashes) == len(filled) and numeric:
        return pd.Series([0.0 if isinstance(v, str) else (float(v) if _text(v) else None) for v in values],
                         dtype="float64")
    if filled and all(isinstance(v, dt.date) for v in filled):
        return pd.Series([pd.Timestamp(v) if isinstance(v, dt.date) else pd.NaT for v in values])
    strings = pd.Series([_text(v) or None for v in values], dtype="string")
    parsed = parse_number(strings)
    if filled and parsed.notna().sum() == len(filled) and all(isinstance(v, str) for v in filled):
        return parsed
    return strings


def read_workbook(path: Path) -> MapsWorkbook:
    from python_calamine import CalamineWorkbook

    kind, fund, day = parse_name(path)
    try:
        rows = CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0).to_python(skip_empty_area=False)
    except Exception as exc:  # calamine raises its own types for damaged files
        raise MapsError(f"{path.name}: cannot read the workbook ({exc})") from None
    book = MapsWorkbook(path, kind, fund, day)
    r = 0
    while r < len(rows):
        row = rows[r]
        label = plain(_text(row[0])) if row else ""
        if label.startswith("patrimonio") and book.net_assets is None:
            numbers = [v for v in row[1:] if isinstance(v, int | float)]
            if not numbers:
                numbers = [n for n in parse_number(pd.Series([_text(v) for v in row[1:]], dtype="string")).dropna()]
            book.net_assets = float(numbers[0]) if len(numbers) else None
        if _is_title(row, rows[r + 1] if r + 1 < len(rows) else None):
            r = _read_section(rows, r, book)
            continue
        r += 1
    if not book.sections:
        raise MapsError(f"{path.name}: no sections found (titles such as 'Renda Fixa' in column A)")
    return book


def _read_section(rows: list[list[Any]], start: int, book: MapsWorkbook) -> int:
    title = _text(rows[start][0])
    header_row = rows[start + 1]
    width = max((i + 1 for i, v in enumerate(header_row) if _text(v)), default=0)
    headers = unique_names([_text(v) or f"coluna_{i + 1}" for i, v in enumerate(header_row[:width])])
    data: list[list[Any]] = []
    r = start + 2
    total: float | None = None
    while r < len(rows):
        row = (rows[r] + [None] * width)[:width]
        first = plain(_text(row[0]))
        if first == "total" or first.startswith("total "):
            numbers = [v for v in row[1:] if isinstance(v, int | float)]
            total = float(numbers[-1]) if numbers else None
            r += 1
            break
        if first.startswith("subtotal"):
            r += 1
            continue
        if not any(_text(v) for v in row):
            if r + 1 < len(rows) and _is_title(rows[r + 1], rows[r + 2] if r + 2 < len(rows) else None):
                r += 1
                break  # a section without a Total row (e.g. Rentabilidade) ends at the blank line
            r += 1
            continue
        data.append(row)
        r += 1
    frame = pd.DataFrame({h: _column([row[i] for row in data]) for i, h in enumerate(headers)})
    book.sections[title] = frame
    if total is not None:
        book.totals[title] = total
    return r
