"""Brazilian data conventions: decimal comma numbers, dd/mm/yyyy dates, CNPJ/CPF check digits."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# Written where a value is zero in administrators' reports.
ZERO_MARKS = {"—", "–", "-", "--"}
_CNPJ_CLEAN = re.compile(r"[.\-/\s]")
_CNPJ_SHAPE = re.compile(r"^[0-9A-Z]{12}[0-9]{2}$")


def parse_number(values: pd.Series) -> pd.Series:
    """Numbers written the Brazilian way ("1.234,56", "R$ 1.995,88", "(10,5)", "—") as floats.

    Plain machine numbers ("1234.5", from typed spreadsheet cells) are read as they are. What
    cannot be read becomes NaN; use ``invalid_numbers`` to list it.
    """
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    text = values.astype("string").str.strip()
    text = text.str.replace("R$", "", regex=False).str.replace("\u00a0", "", regex=False).str.replace(" ", "",
                                                                                                        regex=False)
    zero = text.isin(ZERO_MARKS)
    negative = text.str.startswith("(") & text.str.endswith(")")
    text = text.str.strip("()")
    trailing_minus = text.str.endswith("-") & (text.str.len() > 1)
    text = text.where(~trailing_minus, "-" + text.str.rstrip("-"))
    has_comma = text.str.contains(",", regex=False)
    brazilian = text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    # A lone dot with exactly three digits after it and no comma is a thousands separator ("1.500").
    thousands_only = ~has_comma & text.str.fullmatch(r"-?\d{1,3}(\.\d{3})+")
    machine = text.where(~thousands_only, text.str.replace(".", "", regex=False))
    chosen = brazilian.where(has_comma, machine)
    numbers = pd.to_numeric(chosen, errors="coerce").astype("float64")
    numbers = numbers.where(~negative.fillna(False), -numbers)
    return numbers.where(~zero.fillna(False), 0.0)


def parse_date(values: pd.Series) -> pd.Series:
    """Dates written dd/mm/yyyy (or ISO yyyy-mm-dd) as datetime64; what cannot be read becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    text = values.astype("string").str.strip().str.slice(0, 10)
    brazilian = pd.to_datetime(text, format="%d/%m/%Y", errors="coerce")
    iso = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return brazilian.fillna(iso)


def clean_cnpj(values: pd.Series) -> pd.Series:
    """CNPJ as 14 characters of text, punctuation removed, upper case (alphanumeric CNPJ allowed)."""
    text = values.astype("string").str.strip().str.upper().str.replace(_CNPJ_CLEAN, "", regex=True)
    # Numeric CNPJ that lost leading zeros in a spreadsheet.
    return text.where(~text.str.fullmatch(r"\d{1,13}").fillna(False), text.str.zfill(14))


def _cnpj_digit(body: str) -> int:
    weights = list(range(len(body) - 7, 1, -1)) + list(range(9, 1, -1))
    total = sum((ord(char) - 48) * weight for char, weight in zip(body, weights))
    remainder = total % 11
    return 0 if remainder < 2 else 11 - remainder


def cnpj_is_valid(cnpj: str) -> bool:
    """Check digits of a CNPJ: numeric, or alphanumeric (in force since July 2026; letters count as ASCII - 48)."""
    if not isinstance(cnpj, str) or not _CNPJ_SHAPE.fullmatch(cnpj) or len(set(cnpj)) == 1:
        return False
    first = _cnpj_digit(cnpj[:12])
    second = _cnpj_digit(cnpj[:12] + str(first))
    return cnpj[12:] == f"{first}{second}"


def cpf_is_valid(cpf: str) -> bool:
    digits = re.sub(r"\D", "", cpf or "")
    if len(digits) != 11 or len(set(digits)) == 1:
        return False
    for size in (9, 10):
        total = sum(int(d) * w for d, w in zip(digits[:size], range(size + 1, 1, -1)))
        check = (total * 10) % 11 % 10
        if check != int(digits[size]):
            return False
    return True


def document_is_valid(document: str) -> bool:
    """A CNPJ (14 characters) or CPF (11 digits)."""
    text = re.sub(r"[.\-/\s]", "", str(document or "")).upper()
    return cpf_is_valid(text) if len(text) == 11 else cnpj_is_valid(text)


def validate_cnpj(values: pd.Series) -> pd.Series:
    """A boolean Series: whether each (cleaned) CNPJ has valid check digits (missing -> False)."""
    unique = values.dropna().unique()
    verdict = {value: cnpj_is_valid(value) for value in unique}
    return values.map(verdict).fillna(False).astype(bool)


def format_number(value: float, decimals: int = 2) -> str:
    """1234.5 -> '1.234,50'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
