"""Column types for text read from files: money, numbers, dates and identifiers that stay text.

``apply_types`` gives a column the type a config or a step's ``types`` option names; ``infer_types``
types the rest of a workflow read, never turning an identifier (CNPJ, CPF, CEP, codes with leading
zeros, ``ddmmyy``) into a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from etl import brazil, money
from etl.errors import DataError

ColumnType = Literal["text", "text_upper", "number", "integer", "money", "money:cents", "date", "date:ddmmyy",
                     "date:ddmmyyyy", "date:yyyymmdd", "cnpj", "cpf", "document"]
DATE_FORMATS = {"date:ddmmyy": "%d%m%y", "date:ddmmyyyy": "%d%m%Y", "date:yyyymmdd": "%Y%m%d"}
# Column names that hold identifiers whatever their values look like.
IDENTIFIER_NAME = re.compile(r"(^|_|\b)(cnpj|cpf|cep|cod|codigo|código|code|id|conta|agencia|agência|nosso|documento|"
                             r"doc|isin|cusip|seu_numero|nosso_numero|inscricao|inscrição)($|_|\b)", re.IGNORECASE)
INVALID_ROWS_LISTED = 50


@dataclass
class Typing:
    """What typing found: warnings for the result and the rows whose CNPJ/CPF check digits fail."""

    warnings: list[str] = field(default_factory=list)
    invalid_documents: list[dict[str, Any]] = field(default_factory=list)
    invalid_count: int = 0


def _example(values: pd.Series, bad: pd.Series) -> str:
    value = values[bad].iloc[0]
    # numpy scalars print as np.float64(inf); the user typed inf.
    return repr(value.item() if hasattr(value, "item") else value)


def apply_type(frame: pd.DataFrame, column: str, kind: str, name: str, found: Typing, *, decimal_mark: str = ",",
               thousands: str | None = None, invalid: Literal["flag", "fail"] = "flag",
               first_row: int = 2) -> pd.DataFrame:
    """Type one column in place; warnings and invalid documents go to ``found``.

    ``first_row`` is the file line of the frame's first row (a header on line 1 makes it 2), so
    listed rows can be found in the file.
    """
    values = frame[column]
    if kind in ("number", "integer", "money", "money:cents"):
        if kind == "money:cents":
            parsed, bad = money.parse_cents(values)
        else:
            parsed, bad = money.parse_decimal(values, decimal_mark, thousands)
        if bad.any():
            found.warnings.append(f"{name}.{column}: {int(bad.sum())} value(s) are not numbers, "
                                  f"e.g. {_example(values, bad)}")
        if kind == "money" and money.scale_of(parsed) > money.MONEY_SCALE:
            found.warnings.append(f"{name}.{column}: amounts with more than two places were rounded half-even "
                                  "to the cent")
            parsed = money.narrow(parsed, money.MONEY_SCALE)
        if kind == "integer":
            whole = parsed.isna() | (parsed == parsed.round(0)).fillna(False).astype(bool)
            if not whole.all():
                found.warnings.append(f"{name}.{column}: {int((~whole).sum())} value(s) are not whole numbers, "
                                      f"e.g. {_example(values, ~whole)}")
            parsed = money.to_integers(parsed)
        frame[column] = parsed
    elif kind == "date" or kind in DATE_FORMATS:
        text = values.astype("string").str.strip()
        if kind == "date":
            parsed = brazil.parse_date(values)
        else:
            parsed = pd.to_datetime(text.where(~text.str.fullmatch(r"0+").fillna(False)), format=DATE_FORMATS[kind],
                                    errors="coerce")
        bad = text.notna() & text.ne("") & ~text.str.fullmatch(r"0+").fillna(False) & parsed.isna()
        if bad.any():
            expected = "dd/mm/yyyy" if kind == "date" else kind.split(":")[1]
            found.warnings.append(f"{name}.{column}: {int(bad.sum())} value(s) are not {expected} dates, "
                                  f"e.g. {_example(values, bad)}")
        frame[column] = parsed
    elif kind in ("cnpj", "cpf", "document"):
        cleaned = brazil.clean_cnpj(values) if kind == "cnpj" else values.astype("string").str.strip().str.upper(
        ).str.replace(r"[.\-/\s]", "", regex=True)
        if kind == "cpf":
            cleaned = cleaned.where(~cleaned.str.fullmatch(r"\d{1,10}").fillna(False), cleaned.str.zfill(11))
        check = {"cnpj": brazil.cnpj_is_valid, "cpf": brazil.cpf_is_valid, "document": brazil.document_is_valid}[kind]
        verdict = {value: check(value) for value in cleaned.dropna().unique()}
        valid = cleaned.map(verdict).fillna(False).astype(bool) & cleaned.notna()
        wrong = cleaned.notna() & cleaned.ne("") & ~valid
        if wrong.any():
            positions = [int(i) for i in wrong.to_numpy().nonzero()[0]]
            examples = ", ".join(cleaned[wrong].astype(str).unique()[:3])
            message = (f"{name}.{column}: {len(positions)} value(s) with invalid {kind.upper()} check digits "
                       f"({examples}; rows {', '.join(str(p + first_row) for p in positions[:10])}"
                       f"{' ...' if len(positions) > 10 else ''})")
            if invalid == "fail":
                raise DataError(message)
            found.warnings.append(message)
            found.invalid_count += len(positions)
            for position in positions[:INVALID_ROWS_LISTED - len(found.invalid_documents)]:
                found.invalid_documents.append({"column": column, "row": position + first_row,
                                                "value": str(values.iloc[position])})
        frame[column] = cleaned
        frame[f"{column}_valid"] = valid
    elif kind == "text_upper":
        frame[column] = values.astype("string").str.strip().str.upper()
    else:
        frame[column] = values.astype("string").str.strip()
    return frame


# Fixed-width digit dates that stay text (a typed read must not make 200326 a number).
DIGIT_DATES = {6: ("%d%m%y",), 8: ("%d%m%Y", "%Y%m%d")}


def is_identifier(name: str, values: pd.Series) -> bool:
    """Text that must stay text: an identifier's column name, leading zeros, 11+ digits (CNPJ/CPF
    without punctuation), or digit dates (ddmmyy, ddmmyyyy, yyyymmdd) in every row.

    Whole amounts of equal width (150000, 250000, 300000) are numbers: width alone says nothing.
    """
    if IDENTIFIER_NAME.search(str(name)):
        return True
    text = values.dropna().astype("string").str.strip()
    text = text[text.ne("")]
    if text.empty:
        return False
    if text.str.fullmatch(r"0\d+").any():
        return True
    digits = text.str.fullmatch(r"\d+")
    if digits.all():
        lengths = text.str.len()
        if lengths.min() >= 11:
            return True
        width = int(lengths.iloc[0])
        return bool(lengths.nunique() == 1 and any(
            pd.to_datetime(text, format=pattern, errors="coerce").notna().all() for pattern in DIGIT_DATES.get(width, ())))
    return bool(text.str.fullmatch(r"\d{2}\.\d{3}\.\d{3}/\d{4}-\d{2}|\d{3}\.\d{3}\.\d{3}-\d{2}|\d{5}-\d{3}").any())


def infer_types(frame: pd.DataFrame, *, decimal_mark: str = ",", thousands: str | None = None,
                skip: set[str] | None = None) -> pd.DataFrame:
    """Text columns whose every value is a dd/mm/yyyy date or a number become typed (numbers with
    places become exact decimals, whole numbers Int64); identifiers stay text."""
    skip = skip or set()
    for column in frame.columns:
        values = frame[column]
        if column in skip or not (isinstance(values.dtype, pd.StringDtype) or values.dtype == object):
            continue
        present = values.dropna().astype("string").str.strip()
        present = present[present.ne("")]
        if present.empty or is_identifier(column, present):
            continue
        if present.str.fullmatch(r"\d{2}/\d{2}/\d{4}").all():
            dates = brazil.parse_date(values)
            if dates[values.notna()].notna().all():
                frame[column] = dates
            continue
        if not present.str.fullmatch(r"[-(R$\s]*[\d.,]+\)?-?|[—–]").all():
            continue
        parsed, bad = money.parse_decimal(values, decimal_mark, thousands)
        if bad.any():
            continue
        text = money.machine_text(present, decimal_mark, thousands)
        if text.str.fullmatch(r"-?\d+").all() and not present.str.contains(r"[,.]", regex=True).any():
            frame[column] = money.to_integers(parsed)
        else:
            frame[column] = parsed
    return frame


def type_frame(frame: pd.DataFrame, types: dict[str, str], name: str, *, decimal_mark: str = ",",
               thousands: str | None = None, infer: bool = True, first_row: int = 2) -> tuple[pd.DataFrame, Typing]:
    """Apply the named types, then (``infer``) type the other columns; errors list the columns there are."""
    found = Typing()
    absent = [c for c in types if c not in frame.columns]
    if absent:
        raise DataError(f"{name}: column(s) {absent} (in types) not found; the columns are: "
                        f"{', '.join(map(str, frame.columns))}")
    for column, kind in types.items():
        frame = apply_type(frame, column, kind, name, found, decimal_mark=decimal_mark, thousands=thousands,
                           first_row=first_row)
    if infer:
        frame = infer_types(frame, decimal_mark=decimal_mark, thousands=thousands, skip=set(types))
    return frame, found
