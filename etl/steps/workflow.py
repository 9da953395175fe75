"""Generic workflow steps. Datasets pass by reference: each step writes a parquet file in its work
folder and returns its path as ``dataset``; the next step takes it as a parameter or from
``previous_outputs``. With no parameters every step runs on the bundled samples.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from etl import brazil, runtime
from etl.datasets import DataPath, DatasetError, ReadOptions, dataset_result, format_of, read_table, replacing, resolve, \
    write_csv, write_parquet
from etl.expr import Expression, ExpressionText, mask
from etl.registry import step

logger = logging.getLogger(__name__)

SAMPLE_CSV = "positions/internal/posicoes_20260218.csv"
SAMPLE_XLSX = "lookups/DE_PARA_Fundos_20260201.xlsx"
SAMPLE_PARQUET = "workflow/funds.parquet"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every value reads as a Brazilian number or dd/mm/yyyy date become typed."""
    for column in frame.columns:
        values = frame[column]
        if not (isinstance(values.dtype, pd.StringDtype) or values.dtype == object):
            continue
        present = values.dropna()
        if present.empty:
            continue
        dates = brazil.parse_date(present)
        if dates.notna().all() and present.astype("string").str.fullmatch(r"\d{2}/\d{2}/\d{4}").all():
            frame[column] = brazil.parse_date(values)
            continue
        if present.astype("string").str.fullmatch(r"[-(R$\s]*[\d.,]+\)?-?").all():
            numbers = brazil.parse_number(values)
            if numbers[values.notna()].notna().all():
                frame[column] = numbers
    return frame


def _load(reference: str | None) -> tuple[pd.DataFrame, Path]:
    """A dataset by path (parquet, CSV or Excel), from previous_outputs, or the bundled sample CSV."""
    reference = reference or runtime.previous_outputs().get("dataset") or SAMPLE_CSV
    path = resolve(reference)
    if not path.exists():
        raise DatasetError(f"dataset {reference} does not exist ({path})")
    fmt = format_of(path)
    frame = read_table(path, fmt)
    return (frame if fmt == "parquet" else _typed(frame)), path


def _save(frame: pd.DataFrame, name: str) -> Path:
    path = write_parquet(frame, runtime.work_dir() / f"{name}.parquet")
    runtime.add_artifact(path)
    return path


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DatasetError(f"{what}: column(s) {absent} not found; the dataset has: {', '.join(map(str, frame.columns))}")


class ReadCsvParams(_Params):
    path: DataPath = Field(SAMPLE_CSV, description="CSV file under ETL_INPUT_DIR (or an absolute path inside the data folders).")
    read: ReadOptions = Field(default_factory=ReadOptions)
    typed: bool = Field(True, description="Turn columns of Brazilian numbers/dates into numbers/dates.")


class ReadExcelParams(ReadCsvParams):
    path: DataPath = Field(SAMPLE_XLSX, description="Workbook under ETL_INPUT_DIR.")


def _read_file(params: ReadCsvParams, fmt: str, name: str) -> dict[str, Any]:
    path = resolve(params.path)
    frame = read_table(path, fmt, params.read)
    frame = _typed(frame) if params.typed else frame
    return dataset_result(frame, _save(frame, name), source=str(path))


@step("read_csv", ReadCsvParams, "Read a CSV file")
def read_csv(params: ReadCsvParams) -> dict[str, Any]:
    """Read a CSV (defaults: ';', decimal comma, latin-1; a UTF-8 BOM is detected)."""
    return _read_file(params, "csv", "read_csv")


@step("read_excel", ReadExcelParams, "Read an Excel sheet")
def read_excel(params: ReadExcelParams) -> dict[str, Any]:
    """Read one sheet of a workbook (calamine): sheet, header_row and skip_rows in `read`."""
    return _read_file(params, "xlsx", "read_excel")


class ReadParquetParams(_Params):
    path: DataPath = Field(SAMPLE_PARQUET, description="Parquet file under ETL_INPUT_DIR.")


@step("read_parquet", ReadParquetParams, "Read a Parquet file")
def read_parquet(params: ReadParquetParams) -> dict[str, Any]:
    """Read a Parquet file."""
    path = resolve(params.path)
    frame = read_table(path, "parquet")
    return dataset_result(frame, _save(frame, "read_parquet"), source=str(path))


class ConvertParams(_Params):
    path: DataPath = Field(SAMPLE_CSV, description="CSV or Excel file to convert.")
    read: ReadOptions = Field(default_factory=ReadOptions)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Output name (default: the file's).")


@step("convert_parquet", ConvertParams, "Convert a file to Parquet")
def convert_parquet(params: ConvertParams) -> dict[str, Any]:
    """Convert a CSV or Excel file to Parquet in ETL_OUTPUT_DIR/converted (numbers and dates typed)."""
    path = resolve(params.path)
    frame = _typed(read_table(path, format_of(path), params.read))
    out = write_parquet(frame, runtime.output_dir() / "converted" / f"{params.name or path.stem}.parquet")
    runtime.add_artifact(out)
    return dataset_result(frame, out, source=str(path))


class FilterParams(_Params):
    dataset: DataPath | None = Field(None, description="Dataset path; default: previous_outputs.dataset, else a sample.")
    where: ExpressionText = Field("quantidade > 0", description="Keep the rows where this expression is true.")
    columns: list[str] | None = Field(None, description="Keep only these columns.")


@step("filter", FilterParams, "Filter rows")
def filter_rows(params: FilterParams) -> dict[str, Any]:
    """Keep the rows matching an expression (and optionally only some columns)."""
    frame, _ = _load(params.dataset)
    Expression(params.where)
    kept = frame[mask(params.where, frame).to_numpy()]
    if params.columns:
        _require(kept, params.columns, "filter")
        kept = kept[params.columns]
    return dataset_result(kept, _save(kept.reset_index(drop=True), "filter"), rows_removed=int(len(frame) - len(kept)))


class JoinParams(_Params):
    left: DataPath | None = Field(None, description="Left dataset; default: previous_outputs.dataset, else a sample.")
    right: DataPath = Field(SAMPLE_XLSX, description="Right dataset.")
    on: dict[str, str] = Field({"cnpj_fundo": "CNPJ"}, description="Left column -> right column.")
    how: Literal["inner", "left", "right", "outer"] = "left"


@step("join", JoinParams, "Join two datasets")
def join(params: JoinParams) -> dict[str, Any]:
    """Join two datasets on key columns."""
    left, _ = _load(params.left)
    right, _ = _load(params.right)
    _require(left, list(params.on), "join (left)")
    _require(right, list(params.on.values()), "join (right)")
    right = right.rename(columns={v: k for k, v in params.on.items()})
    for key in params.on:
        if left[key].dtype != right[key].dtype:
            left[key], right[key] = left[key].astype("string"), right[key].astype("string")
    joined = left.merge(right, on=list(params.on), how=params.how, suffixes=("", "_right"))
    return dataset_result(joined, _save(joined, "join"))


class AggregateParams(_Params):
    dataset: DataPath | None = None
    by: list[str] = Field(["cnpj_fundo"], description="Group by these columns.")
    metrics: dict[str, Literal["sum", "mean", "min", "max", "count", "nunique", "first"]] = Field(
        {"valor_mercado": "sum", "codigo_ativo": "count"}, description="Column -> aggregation.")


@step("aggregate", AggregateParams, "Aggregate")
def aggregate(params: AggregateParams) -> dict[str, Any]:
    """Group and aggregate (sum, mean, min, max, count, nunique, first)."""
    frame, _ = _load(params.dataset)
    _require(frame, params.by + list(params.metrics), "aggregate")
    result = frame.groupby(params.by, dropna=False, as_index=False).agg(
        **{f"{column}_{how}": (column, how) for column, how in params.metrics.items()})
    return dataset_result(result, _save(result, "aggregate"))


class OutputParams(_Params):
    dataset: DataPath | None = None
    format: Literal["xlsx", "csv", "parquet"] = "xlsx"
    name: str = Field("output", pattern=r"^[A-Za-z0-9_.-]+$", description="File name, without extension.")


@step("output", OutputParams, "Write a dataset out")
def output(params: OutputParams) -> dict[str, Any]:
    """Write a dataset to ETL_OUTPUT_DIR/workflow as Excel, CSV (';', decimal comma, UTF-8 BOM) or Parquet."""
    frame, _ = _load(params.dataset)
    target = runtime.output_dir() / "workflow" / f"{params.name}.{params.format}"
    if params.format == "xlsx":
        with replacing(target) as tmp, pd.ExcelWriter(tmp, engine="xlsxwriter", datetime_format="dd/mm/yyyy") as writer:
            frame.to_excel(writer, index=False, sheet_name="data")
            sheet = writer.sheets["data"]
            sheet.freeze_panes(1, 0)
            sheet.autofilter(0, 0, max(len(frame), 1), max(len(frame.columns) - 1, 0))
            sheet.set_column(0, max(len(frame.columns) - 1, 0), 18)
    elif params.format == "csv":
        write_csv(frame, target)
    else:
        write_parquet(frame, target)
    runtime.add_artifact(target)
    return dataset_result(frame, target, file=str(target))
