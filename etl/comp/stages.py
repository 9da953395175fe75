"""The stages of a completeness control, as plain functions over DataFrames."""

from __future__ import annotations

import datetime as dt
import glob
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl import brazil, columns, money
from etl.comp.config import Compare, ConfigError, Dataset, Enrichment, Harmonisation, PreHarmonisation, Rule, \
    Transform, resolve_tokens
from etl.datasets import DatasetError, format_of, read_table, unique_names
from etl.errors import DataError
from etl.expr import Expression, mask

logger = logging.getLogger(__name__)

MATCHED, SRC_ONLY, TGT_ONLY = "matched", "src_only", "tgt_only"
UNEXPLAINED = "Unexplained"


def _columns_hint(frame: pd.DataFrame) -> str:
    return ", ".join(map(str, frame.columns[:40])) + (" ..." if len(frame.columns) > 40 else "")


# --- finding files ---------------------------------------------------------------------------


def find_input(root: Path, pattern: str, run_date: dt.date, control: str) -> Path:
    """The file a dataset pattern names for ``run_date`` (the last in name order if a glob matches several)."""
    resolved = resolve_tokens(pattern, run_date, control)
    matches = sorted(glob.glob(str(root / resolved)))
    if not matches:
        raise DataError(f"no file matches {resolved!r} in {root} for run date {run_date:%d/%m/%Y} "
                        f"(pattern {pattern!r})")
    return Path(matches[-1])


def find_latest(root: Path, pattern: str, run_date: dt.date, control: str) -> Path | None:
    """The file matching a dated pattern with the latest date on or before ``run_date``."""
    if not re.search(r"\{(yyyymmdd|ddmmyyyy|yyyy-mm-dd)\}", pattern):
        matches = sorted(glob.glob(str(root / resolve_tokens(pattern, run_date, control))))
        return Path(matches[-1]) if matches else None
    wildcard = re.sub(r"\{(yyyymmdd|ddmmyyyy|yyyy-mm-dd)\}", "*", pattern.replace("{control}", control))
    regex = re.escape(pattern.replace("{control}", control))
    formats = {"yyyymmdd": ("(\\d{8})", "%Y%m%d"), "ddmmyyyy": ("(\\d{8})", "%d%m%Y"),
               "yyyy-mm-dd": ("(\\d{4}-\\d{2}-\\d{2})", "%Y-%m-%d")}
    token = re.search(r"\\\{(yyyymmdd|ddmmyyyy|yyyy\\-mm\\-dd)\\\}", regex)
    assert token is not None
    name = token.group(1).replace("\\", "")
    regex = regex.replace(token.group(0), formats[name][0]).replace("\\*", ".*").replace("\\?", ".")
    best: tuple[dt.date, Path] | None = None
    for match in glob.glob(str(root / wildcard)):
        relative = Path(match).relative_to(root).as_posix()
        found = re.fullmatch(regex, relative)
        if not found:
            continue
        try:
            day = dt.datetime.strptime(found.group(1), formats[name][1]).date()
        except ValueError:
            continue
        if day <= run_date and (best is None or day > best[0]):
            best = (day, Path(match))
    return best[1] if best else None


# --- pre-harmonisation -----------------------------------------------------------------------


def _first_cell(raw: pd.DataFrame) -> pd.Series:
    """Each row's first non-empty cell (column by column: bfill(axis=1) is row-wise and very slow)."""
    if not raw.shape[1]:
        return pd.Series(dtype="string")
    first = raw.iloc[:, 0].astype("string")
    for index in range(1, raw.shape[1]):
        if not first.isna().any():
            break
        first = first.fillna(raw.iloc[:, index].astype("string"))
    return first.str.strip()


def pre_harmonise(raw: pd.DataFrame, rules: PreHarmonisation, header_row: int | None, name: str) -> pd.DataFrame:
    """Find the header, cut the table, drop empty and total rows; columns get their names."""
    if rules.header_contains:
        wanted = [w.strip().casefold() for w in rules.header_contains]
        cells = raw.apply(lambda col: col.astype("string").str.strip().str.casefold())
        hits = pd.concat([(cells == w).any(axis=1) for w in wanted], axis=1).all(axis=1)
        if not hits.any():
            raise DataError(f"{name}: no row holds all the header texts {rules.header_contains}")
        header_row = int(hits.to_numpy().argmax())
    header_row = header_row or 0
    if header_row >= len(raw):
        raise DataError(f"{name}: header row {header_row} is beyond the {len(raw)} rows read")
    header = [str(v).strip() if not pd.isna(v) else "" for v in raw.iloc[header_row]]
    table = raw.iloc[header_row + 1:].reset_index(drop=True)
    keep = [i for i, h in enumerate(header) if h or table.iloc[:, i].notna().any()]
    table = table.iloc[:, keep]
    table.columns = unique_names([header[i] or f"column_{i}" for i in keep])
    first = _first_cell(table) if rules.stop_at_matching or rules.drop_rows_matching else None
    if rules.stop_at_matching:
        stops = first.str.contains(rules.stop_at_matching, regex=True, na=False)
        if stops.any():
            table, first = table.iloc[: int(stops.to_numpy().argmax())], first.iloc[: int(stops.to_numpy().argmax())]
    if rules.drop_rows_matching:
        drop = first.str.contains(rules.drop_rows_matching, regex=True, na=False)
        table = table[~drop.to_numpy()]
    if rules.drop_empty_rows:
        table = table.dropna(how="all")
    return table.reset_index(drop=True)


# --- harmonisation ---------------------------------------------------------------------------


def harmonise(frame: pd.DataFrame, rules: Harmonisation, name: str, *, decimal_mark: str = ",",
              thousands: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Rename, type and validate columns; returns the frame and warnings for the task log/result."""
    missing = [c for c in rules.rename if c not in frame.columns]
    if missing:
        raise DataError(f"{name}: column(s) {missing} not found; the file has: {_columns_hint(frame)}")
    frame = frame.rename(columns=rules.rename)
    found = columns.Typing()
    for column, kind in rules.types.items():
        if column not in frame.columns:
            raise DataError(f"{name}: column {column!r} (in harmonisation.types) not found; "
                            f"after renaming the columns are: {_columns_hint(frame)}")
        frame = columns.apply_type(frame, column, kind, name, found, decimal_mark=decimal_mark, thousands=thousands,
                                   invalid=rules.invalid_cnpj)
    warnings = found.warnings
    if rules.keep is not None:
        absent = [c for c in rules.keep if c not in frame.columns]
        if absent:
            raise DataError(f"{name}: column(s) {absent} (in harmonisation.keep) not found; "
                            f"the columns are: {_columns_hint(frame)}")
        frame = frame[rules.keep + [c for c in frame.columns if c.endswith("_valid") and c not in rules.keep]]
    return frame, warnings


# --- enrichment ------------------------------------------------------------------------------


def enrich(frame: pd.DataFrame, lookups: list[tuple[Enrichment, Path | None]], name: str) -> pd.DataFrame:
    """Join each lookup (a 'DE PARA' table) on its keys; its first row per key wins."""
    for lookup, path in lookups:
        if path is None:
            if lookup.required:
                raise DataError(f"{name}: lookup {lookup.name!r} has no file matching {lookup.path!r}")
            logger.warning("%s: lookup %s has no file; its columns stay empty", name, lookup.name)
            for new in lookup.columns.values():
                frame[new] = pd.NA
            continue
        table = read_table(path, lookup.format or format_of(path), lookup.read)
        needed = list(lookup.on.values()) + list(lookup.columns)
        absent = [c for c in needed if c not in table.columns]
        if absent:
            raise DataError(f"{name}: lookup {lookup.name} ({path.name}) has no column(s) {absent}; "
                            f"it has: {_columns_hint(table)}")
        missing_keys = [c for c in lookup.on if c not in frame.columns]
        if missing_keys:
            raise DataError(f"{name}: lookup {lookup.name} joins on {missing_keys}, which the data lacks; "
                            f"it has: {_columns_hint(frame)}")
        table = table[needed].rename(columns={**{v: k for k, v in lookup.on.items()}, **lookup.columns})
        for key in lookup.on:
            if frame[key].dtype == "string" or frame[key].dtype == object:
                table[key] = table[key].astype("string").str.strip()
                if key.lower().startswith("cnpj") or key.lower().endswith("cnpj"):
                    table[key] = brazil.clean_cnpj(table[key])
        table = table.drop_duplicates(subset=list(lookup.on))
        frame = frame.merge(table, on=list(lookup.on), how="left")
    return frame


# --- transforms ------------------------------------------------------------------------------


def transform(frame: pd.DataFrame, steps: list[Transform]) -> pd.DataFrame:
    for step in steps:
        text = step.filter if step.filter is not None else step.expr
        try:
            if step.filter is not None:
                frame = frame[mask(step.filter, money.widened(frame)).to_numpy()].reset_index(drop=True)
            else:
                value = Expression(step.expr).evaluate(money.widened(frame))
                frame[step.column] = money.tidy(value) if isinstance(value, pd.Series) else value
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise DataError(f"transform {text!r} cannot be computed on these columns: {exc}") from None
    return frame


# --- combining and comparing -----------------------------------------------------------------


def _deduplicate(frame: pd.DataFrame, keys: list[str], numeric: list[str], name: str) -> pd.DataFrame:
    duplicated = frame.duplicated(subset=keys, keep=False)
    if not duplicated.any():
        return frame
    logger.warning("%s: %d rows share their keys; numbers are summed per key", name, int(duplicated.sum()))
    aggregations = {c: ("sum" if c in numeric else "first") for c in frame.columns if c not in keys}
    grouped = frame.groupby(keys, as_index=False, dropna=False, sort=False).agg(aggregations)
    for column in numeric:
        if column in grouped.columns:
            grouped[column] = money.narrow(grouped[column])
    return grouped


def combine(src: pd.DataFrame, tgt: pd.DataFrame, keys: list[str], compare: list[Compare]) -> pd.DataFrame:
    """Full outer join on the keys; ``status`` is matched, src_only or tgt_only."""
    for frame, name in ((src, "source"), (tgt, "target")):
        absent = [k for k in keys if k not in frame.columns]
        if absent:
            raise DataError(f"{name}: key column(s) {absent} not found; it has: {_columns_hint(frame)}")
    numeric = [c.column for c in compare]
    src = _deduplicate(src, keys, numeric, "source")
    tgt = _deduplicate(tgt, keys, numeric, "target")
    for key in keys:
        if src[key].dtype != tgt[key].dtype:
            src[key] = src[key].astype("string")
            tgt[key] = tgt[key].astype("string")
    shared = (set(src.columns) & set(tgt.columns)) - set(keys)
    combined = src.rename(columns={c: f"{c}_src" for c in shared}).merge(
        tgt.rename(columns={c: f"{c}_tgt" for c in shared}), on=keys, how="outer", indicator=True)
    combined["status"] = combined.pop("_merge").map({"both": MATCHED, "left_only": SRC_ONLY,
                                                     "right_only": TGT_ONLY}).astype("string")
    return combined


def apply_rules(combined: pd.DataFrame, compare: list[Compare], rules: list[Rule]) -> pd.DataFrame:
    """Tolerance comparison, then the first matching explain rule per break."""
    frame = combined
    out_of_tolerance = np.zeros(len(frame), dtype=bool)
    within = np.zeros(len(frame), dtype=bool)
    matched = (frame["status"] == MATCHED).to_numpy()
    for rule in compare:
        left, right = f"{rule.column}_src", f"{rule.column}_tgt"
        if left not in frame.columns or right not in frame.columns:
            raise DataError(f"compare: column {rule.column!r} must exist on both sides; combined columns: "
                            f"{_columns_hint(frame)}")
        src_values, tgt_values = money.to_decimal(frame[left]), money.to_decimal(frame[right])
        diff = money.narrow(src_values - tgt_values)
        frame[f"diff_{rule.column}"] = diff
        distance = pa.array(diff.abs().array)
        # Exact decimal arithmetic: a difference of 0.01 is within an abs_tolerance of 0.01.
        limit = pa.scalar(rule.abs_tolerance)
        if rule.rel_tolerance:
            larger = pc.max_element_wise(*money.same_type(pa.array(src_values.abs().array),
                                                          pa.array(tgt_values.abs().array)))
            relative = pc.multiply(money.narrow_array(larger), pa.scalar(rule.rel_tolerance))
            relative, absolute = money.same_type(relative, pa.array([rule.abs_tolerance] * len(frame)))
            limit = pc.max_element_wise(relative, absolute)
        # A matched pair with the amount on one side only has no difference to compare: it is a break.
        one_sided = (src_values.isna() ^ tgt_values.isna()).to_numpy(dtype=bool)
        outside = (pc.fill_null(pc.greater(distance, limit), False).to_numpy(zero_copy_only=False) | one_sided) & matched
        differs = pc.fill_null(pc.greater(distance, 0), False).to_numpy(zero_copy_only=False)
        out_of_tolerance |= outside
        within |= differs & ~outside
    frame["break"] = ~matched | out_of_tolerance
    frame["within_tolerance"] = within & ~frame["break"].to_numpy()
    frame["break_type"] = np.select(
        [frame["status"] == SRC_ONLY, frame["status"] == TGT_ONLY, out_of_tolerance],
        ["missing_in_target", "missing_in_source", "value_difference"], default="")
    frame["category"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    frame["explanation"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    frame["rule"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    for rule in rules:
        open_breaks = frame["break"] & frame["category"].isna()
        if not open_breaks.any():
            break
        try:
            hit = open_breaks & mask(rule.when, money.widened(frame))
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise DataError(f"rule {rule.name}: {rule.when!r} cannot be computed on these columns: {exc}") from None
        frame.loc[hit, "category"] = rule.category
        frame.loc[hit, "explanation"] = rule.explanation
        frame.loc[hit, "rule"] = rule.name
    frame.loc[frame["break"] & frame["category"].isna(), "category"] = UNEXPLAINED
    return frame


def break_key(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    parts = [frame[k].astype("string").fillna("") for k in keys]
    key = parts[0]
    for part in parts[1:]:
        key = key + "|" + part
    return key


def read_dataset(path: Path, dataset: Dataset) -> pd.DataFrame:
    from etl.datasets import read_raw

    try:
        return read_raw(path, dataset.format or format_of(path), dataset.read)
    except DatasetError as exc:
        raise DataError(f"{dataset.name}: {exc}") from None


__all__ = ["ConfigError", "DataError", "apply_rules", "break_key", "combine", "enrich", "find_input", "find_latest",
           "harmonise", "pre_harmonise", "read_dataset", "transform"]
