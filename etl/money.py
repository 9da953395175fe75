"""Exact amounts: text parsed to pyarrow decimal128 columns, kept exact, written out without float noise.

A money column is a pandas Series of ``decimal128(precision, scale)[pyarrow]``: filters, joins,
group sums and parquet files keep it exact, and ``Series.sum()`` gives a ``decimal.Decimal``.
Arrow widens the precision on every operation (and refuses past 38 digits), so results are
narrowed back with ``narrow`` wherever this package does arithmetic itself.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Written where a value is zero in administrators' reports.
ZERO_MARKS = ("—", "–", "-", "--")
MONEY_SCALE = 2
MAX_SCALE = 12
# Integer digits kept room for: 10^13 reais with two decimals; wider values widen the column.
INTEGER_DIGITS = 13
# Floats (computed with float operands) are written rounded to this many places: enough for
# prices and rates, and it removes the binary noise (10954.759999999998 -> 10954.76).
FLOAT_PLACES = 10
# Money in files people read (CSV) is shown with exactly MONEY_SCALE places, ties rounded half up (away
# from zero, Python's ROUND_HALF_UP), as Brazilian statements and bank files round; arrow's "half_up"
# would round -0.125 to -0.12.
OUTPUT_ROUNDING = "half_towards_infinity"
_NUMBER = r"-?(\d+\.?\d*|\.\d+)"


def is_decimal(values: Any) -> bool:
    dtype = getattr(values, "dtype", None)
    return isinstance(dtype, pd.ArrowDtype) and pa.types.is_decimal(dtype.pyarrow_dtype)


def scale_of(values: pd.Series) -> int:
    return values.dtype.pyarrow_dtype.scale if is_decimal(values) else 0


def _arrow(values: pd.Series) -> pa.Array:
    array = pa.array(values.astype("string"), from_pandas=True, type=pa.string())
    return array


def machine_text(values: pd.Series, decimal_mark: str = ",", thousands: str | None = None) -> pd.Series:
    """Amounts as they were typed ("1.234,56", "R$ 1.995,88", "(10,5)", "150-", "—") as machine text
    ("1234.56", "-10.5", "0"); what is not a number becomes NA.

    With the default decimal comma and no ``thousands`` given, a lone dot followed by exactly three
    digits is a thousands separator ("1.500" is 1500) and a plain machine number ("1234.5", from a
    typed spreadsheet cell) is read as it is. With ``decimal_mark="."`` the dot is always the decimal
    mark ("1.500" is 1.5) and commas are thousands separators unless ``thousands`` says otherwise.
    """
    text = values.astype("string").str.strip()
    if decimal_mark == "," and thousands is None:
        # The common case, one regex: plain Brazilian amounts ("1.234,56", "1234,5", "-10", "1.500").
        plain = text.str.fullmatch(r"-?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?")
        if bool(plain.fillna(True).all()):
            return text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    text = text.str.replace("R$", "", regex=False).str.replace("\u00a0", "", regex=False).str.replace(
        " ", "", regex=False)
    zero = text.isin(ZERO_MARKS)
    negative = (text.str.startswith("(") & text.str.endswith(")")).fillna(False)
    text = text.str.strip("()")
    trailing_minus = (text.str.endswith("-") & (text.str.len() > 1)).fillna(False)
    text = text.where(~trailing_minus, "-" + text.str.rstrip("-"))
    if thousands is None or thousands == ("." if decimal_mark == "," else ","):
        # A separator where the convention does not allow it ("2,000.25" with a decimal comma) is no number.
        mark, group = (",", r"\.") if decimal_mark == "," else (r"\.", ",")
        shaped = text.str.fullmatch(rf"-?(\d{{1,3}}({group}\d{{3}})+|\d*)({mark}\d*)?") | text.str.fullmatch(
            r"-?\d+\.\d+") if decimal_mark == "," else text.str.fullmatch(rf"-?(\d{{1,3}}({group}\d{{3}})+|\d*)({mark}\d*)?")
        text = text.where(shaped.fillna(False) | text.isin(ZERO_MARKS).fillna(False))
    if decimal_mark == "," and thousands is None:
        has_comma = text.str.contains(",", regex=False)
        brazilian = text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
        thousands_only = ~has_comma & text.str.fullmatch(r"-?\d{1,3}(\.\d{3})+")
        machine = text.where(~thousands_only.fillna(False), text.str.replace(".", "", regex=False))
        chosen = brazilian.where(has_comma.fillna(False), machine)
    else:
        separator = thousands if thousands is not None else ("," if decimal_mark == "." else ".")
        chosen = text.str.replace(separator, "", regex=False) if separator else text
        if decimal_mark != ".":
            chosen = chosen.str.replace(decimal_mark, ".", regex=False)
    chosen = chosen.where(~negative, "-" + chosen)
    chosen = chosen.str.replace(r"^--", "", regex=True)
    chosen = chosen.where(~zero.fillna(False), "0")
    return chosen.where(chosen.str.fullmatch(_NUMBER).fillna(False))


def _decimal_type(array: pa.Array, scale: int) -> pa.DataType:
    integer = pc.max(pc.utf8_length(pc.replace_substring_regex(array, r"^-|\..*$", ""))).as_py() or 1
    return pa.decimal128(min(38, max(integer, INTEGER_DIGITS) + scale), scale)


def from_machine_text(text: pd.Series, min_scale: int = MONEY_SCALE, index: pd.Index | None = None) -> pd.Series:
    """Machine text ("-1234.5") as a decimal column whose scale is the most places any value has
    (at least ``min_scale``, at most MAX_SCALE: more places are rounded half-even)."""
    array = _arrow(text)
    position = pc.find_substring(array, ".")
    places = pc.if_else(pc.greater_equal(position, 0),
                        pc.subtract(pc.subtract(pc.utf8_length(array), position), 1), 0)
    scale = max(min_scale, pc.max(places).as_py() or 0)
    if scale > MAX_SCALE:
        wide = pc.cast(array, pa.decimal128(38, scale))
        decimals = pc.cast(pc.round(wide, MAX_SCALE), pa.decimal128(38, MAX_SCALE))
        decimals = pc.cast(decimals, _decimal_type(array, MAX_SCALE))
    else:
        decimals = pc.cast(array, _decimal_type(array, scale))
    return pd.Series(pd.arrays.ArrowExtensionArray(decimals), index=text.index if index is None else index)


def parse_decimal(values: pd.Series, decimal_mark: str = ",", thousands: str | None = None,
                  min_scale: int = MONEY_SCALE) -> tuple[pd.Series, pd.Series]:
    """Typed amounts as an exact decimal column, and the mask of values that are not numbers."""
    if is_decimal(values):
        return values, pd.Series(False, index=values.index)
    if pd.api.types.is_float_dtype(values):
        text, bad = _float_text(values)
        return from_machine_text(text, min_scale), bad
    if pd.api.types.is_integer_dtype(values):
        return to_decimal(values, min_scale), pd.Series(False, index=values.index)
    text = machine_text(values, decimal_mark, thousands)
    bad = values.notna() & values.astype("string").str.strip().ne("") & text.isna()
    return from_machine_text(text, min_scale), bad.fillna(False).astype(bool)


def parse_cents(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Implied-cents integers as CNAB files write them ("0000001234567" is 12345.67)."""
    text = values.astype("string").str.strip()
    negative = text.str.startswith("-").fillna(False)
    digits = text.str.lstrip("-")
    good = digits.str.fullmatch(r"\d+").fillna(False)
    digits = digits.where(good).str.zfill(3)
    machine = digits.str.slice(0, -2) + "." + digits.str.slice(-2)
    machine = machine.where(~negative, "-" + machine)
    bad = values.notna() & text.ne("").fillna(False) & ~good
    return from_machine_text(machine, MONEY_SCALE), bad.fillna(False).astype(bool)


def to_decimal(values: pd.Series, min_scale: int = 0) -> pd.Series:
    """Any numeric (or numeric text) column as decimal; floats through their shortest repr, rounded."""
    if is_decimal(values):
        return values
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("Int64")
    if pd.api.types.is_integer_dtype(values):
        array = pa.array(values, from_pandas=True).cast(pa.int64())
        return pd.Series(pd.arrays.ArrowExtensionArray(pc.cast(array, pa.decimal128(19, 0))),
                         index=values.index) if min_scale == 0 else from_machine_text(
            pd.Series(pc.cast(array, pa.string()), dtype="string", index=values.index), min_scale)
    if pd.api.types.is_float_dtype(values):
        return from_machine_text(_float_text(values)[0], min_scale)
    return parse_decimal(values, min_scale=min_scale)[0]


def _float_text(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Floats as machine text rounded to FLOAT_PLACES, and the mask of those no decimal column holds
    (infinities, more than 38 digits). Arrow writes large and tiny floats with an exponent
    ("1.234567890123e+10", "1e-7"): those go through their shortest repr, exactly."""
    floats = pa.array(values.to_numpy(dtype="float64", na_value=np.nan), from_pandas=True)
    text = pd.Series(pc.cast(pc.round(floats, FLOAT_PLACES), pa.string()).to_pandas(), dtype="string",
                     index=values.index)
    plain = text.str.fullmatch(_NUMBER).fillna(False)
    missing = text.isna() | text.str.lower().eq("nan").fillna(False)
    for position in np.flatnonzero(~(plain | missing).to_numpy()):
        value = float(values.iloc[position])
        exact = Decimal(repr(round(value, FLOAT_PLACES))) if math.isfinite(value) else None
        written = None if exact is None else format(exact, "f")
        integer_digits = 0 if written is None else len(written.lstrip("-").split(".")[0])
        text.iloc[position] = written if written is not None and integer_digits + MAX_SCALE <= 38 else pd.NA
    text = text.where(~missing)
    bad = values.notna() & text.isna()
    return text, bad.fillna(False).astype(bool)


def narrow(values: pd.Series, scale: int | None = None) -> pd.Series:
    """A decimal column at the smallest precision that holds its values (so later arithmetic has
    room), rounded half-even to ``scale`` places when given."""
    if not is_decimal(values):
        return values
    array = pa.array(values.array)
    if pa.types.is_decimal256(array.type) or array.type.scale > MAX_SCALE:
        # A computed column: the places its values use (rounded at MAX_SCALE), back in decimal128.
        values = tidy(values, min(array.type.scale, MONEY_SCALE) if scale is None else scale)
        array = pa.array(values.array)
    target = array.type.scale if scale is None else scale
    if target < array.type.scale:
        array = pc.round(array, target)
    # The widest value's integer digits, from the extremes (no text round trip).
    extremes = [v for v in (pc.min(array).as_py(), pc.max(array).as_py()) if v is not None]
    digits = max((len(str(abs(int(v)))) for v in extremes), default=1)
    kind = pa.decimal128(min(38, max(digits, INTEGER_DIGITS) + target), target)
    if target > array.type.scale:
        array = pc.cast(array, pa.decimal128(min(38, array.type.precision + target - array.type.scale), target))
    return pd.Series(pd.arrays.ArrowExtensionArray(pc.cast(array, kind)), index=values.index)


def tidy(values: Any, min_scale: int = MONEY_SCALE) -> Any:
    """A computed decimal column at the places its values use (at least ``min_scale``, at most MAX_SCALE)."""
    if not is_decimal(values):
        return values
    array = pa.array(values.array)
    if array.type.scale > MAX_SCALE:
        array = pc.round(array, MAX_SCALE)
    text = pc.cast(array, pa.string())
    trimmed = pc.replace_substring_regex(pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1"), r"\.$", "")
    return from_machine_text(pd.Series(trimmed.to_pandas(), dtype="string", index=values.index), min_scale)


def widened(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its decimal columns as decimal256 (same precision and scale), for evaluating
    expressions: arrow widens the precision on each operation and decimal128 stops at 38 digits
    (``valor * taxa / 100`` needs 53). Results are narrowed back with ``tidy``."""
    wide = {}
    for column in frame.columns:
        values = frame[column]
        if is_decimal(values) and pa.types.is_decimal128(values.dtype.pyarrow_dtype):
            kind = values.dtype.pyarrow_dtype
            wide[column] = pd.Series(pd.arrays.ArrowExtensionArray(
                pc.cast(pa.array(values.array), pa.decimal256(kind.precision, kind.scale))), index=values.index)
    return frame.assign(**wide) if wide else frame


def pairwise(x: Any, y: Any, pick: str) -> Any:
    """min/max of two columns or a column and a number, exact for decimals (np.minimum is not:
    on decimal columns it returns the scalar for every row); missing when either is missing."""
    if not isinstance(x, pd.Series) and not isinstance(y, pd.Series):
        return min(x, y) if pick == "min" else max(x, y)
    if not (is_decimal(x) or is_decimal(y)):
        return np.minimum(x, y) if pick == "min" else np.maximum(x, y)
    index = x.index if isinstance(x, pd.Series) else y.index
    left, right = (v if isinstance(v, pd.Series) else pd.Series(v, index=index) for v in (x, y))
    left, right = (to_decimal(v) if not is_decimal(v) else v for v in (left, right))
    a, b = same_type(pa.array(left.array), pa.array(right.array))
    chosen = (pc.min_element_wise if pick == "min" else pc.max_element_wise)(a, b, skip_nulls=False)
    return narrow(pd.Series(pd.arrays.ArrowExtensionArray(chosen), index=index))


def same_type(*arrays: pa.Array) -> list[pa.Array]:
    """Decimal arrays cast to one type (the widest scale), as element-wise kernels want."""
    scale = max(a.type.scale for a in arrays)
    return [pc.cast(a, pa.decimal128(38, scale)) for a in arrays]


def narrow_array(array: pa.Array) -> pa.Array:
    return pa.array(narrow(pd.Series(pd.arrays.ArrowExtensionArray(array))).array)


def quantize(values: pd.Series, places: int = MONEY_SCALE) -> pd.Series:
    """A decimal column with exactly ``places`` places, ties rounded half up (OUTPUT_ROUNDING)."""
    array = pa.array(values.array)
    wide = pa.decimal256 if pa.types.is_decimal256(array.type) else pa.decimal128
    room = 76 if wide is pa.decimal256 else 38
    # The widest type first: rounding 999.995 up to 1000.00 needs one more integer digit.
    array = pc.cast(array, wide(room, array.type.scale))
    if places < array.type.scale:
        array = pc.round(array, places, round_mode=OUTPUT_ROUNDING)
    return pd.Series(pd.arrays.ArrowExtensionArray(pc.cast(array, wide(room, places))), index=values.index)


def to_text(values: pd.Series, decimal_mark: str = ",", thousands: str = "", places: int | None = None) -> pd.Series:
    """A decimal or float column as text with its places written out ("150000,00", "1.234,56"); with
    ``places``, a decimal column is written with exactly that many (rounded half up)."""
    if is_decimal(values):
        if places is not None:
            values = quantize(values, places)
        text = pc.cast(pa.array(values.array), pa.string())
    elif pd.api.types.is_float_dtype(values):
        floats = pa.array(values.to_numpy(dtype="float64", na_value=np.nan), from_pandas=True)
        floats = pc.if_else(pc.is_nan(floats), pa.scalar(None, pa.float64()), floats)
        text = pc.cast(pc.round(floats, FLOAT_PLACES), pa.string())
        text = pc.replace_substring_regex(text, r"\.0$", "")
    else:
        return values.astype("string")
    series = pd.Series(text.to_pandas(), dtype="string", index=values.index)
    if thousands:
        integer = series.str.extract(r"^(-?)(\d+)(.*)$")
        grouped = integer[1].str.replace(r"\B(?=(\d{3})+(?!\d))", "\x00", regex=True)
        series = integer[0] + grouped + integer[2]
        series = series.str.replace(".", decimal_mark, regex=False).str.replace("\x00", thousands, regex=False)
    elif decimal_mark != ".":
        series = series.str.replace(".", decimal_mark, regex=False)
    return series


def total(values: pd.Series) -> Decimal:
    """The exact sum of a decimal column (0 with its scale when empty)."""
    scale = scale_of(values)
    found = values.sum() if len(values) else None
    if found is None or found is pd.NA or (isinstance(found, float) and math.isnan(found)):
        found = Decimal(0)
    return Decimal(found).quantize(Decimal(1).scaleb(-scale)) if scale else Decimal(found)


def json_text(value: Decimal) -> str:
    """A Decimal for a JSON result: text, every place kept ("150000.00")."""
    return format(value, "f")


def json_float(value: float) -> float:
    """A float for a JSON result, without binary noise."""
    return float(round(value, FLOAT_PLACES))


def to_integers(values: pd.Series) -> pd.Series:
    """A decimal column rounded half-even to whole numbers, as Int64."""
    array = pc.cast(pc.round(pa.array(values.array), 0), pa.int64())
    return pd.Series(pd.array(array, dtype="Int64"), index=values.index)


__all__ = ["from_machine_text", "is_decimal", "json_text", "machine_text", "narrow",
           "parse_cents", "parse_decimal", "quantize", "scale_of", "to_decimal", "to_integers", "to_text", "total"]
