"""Generic workflow steps. Datasets pass by reference: each step writes a parquet file in its work
folder and returns its path as ``dataset``; the next step takes it as a parameter or from
``previous_outputs``. With no parameters every step runs on the bundled samples.

Amounts read from text become exact decimals and stay exact through every step; identifiers stay text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from etl import columns, money, runtime
from etl.columns import ColumnType
from etl.datasets import DataPath, DatasetError, ReadOptions, concat, expand_paths, format_of, \
    read_table, resolve, sheet_names
from etl.expr import Expression, ExpressionText, mask
from etl.registry import step
from etl.results import dataset_result
from etl.writers import write_csv, write_excel, write_parquet

logger = logging.getLogger(__name__)

SAMPLE_CSV = "positions/internal/posicoes_20260218.csv"
SAMPLE_XLSX = "lookups/DE_PARA_Fundos_20260201.xlsx"
SAMPLE_PARQUET = "workflow/funds.parquet"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def load(reference: str | None) -> tuple[pd.DataFrame, Path]:
    """A dataset by path (parquet, CSV or Excel), from previous_outputs, or the bundled sample CSV."""
    reference = reference or runtime.previous_outputs().get("dataset") or SAMPLE_CSV
    path = resolve(reference)
    if not path.exists():
        raise DatasetError(f"dataset {reference} does not exist ({path})")
    fmt = format_of(path)
    frame = read_table(path, fmt)
    return (frame if fmt == "parquet" else columns.infer_types(frame)), path


def save(frame: pd.DataFrame, name: str) -> Path:
    path = write_parquet(frame, runtime.work_dir() / f"{name}.parquet")
    runtime.add_artifact(path)
    return path


def require(frame: pd.DataFrame, wanted: list[str], what: str) -> None:
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise DatasetError(f"{what}: column(s) {absent} not found; the dataset has: {', '.join(map(str, frame.columns))}")


class ReadCsvParams(_Params):
    path: DataPath = Field(SAMPLE_CSV, description="File under ETL_INPUT_DIR (or an absolute path inside the data "
                                                   "folders); a glob (*.csv) stacks every match, adding source_file.")
    read: ReadOptions = Field(default_factory=ReadOptions)
    typed: bool = Field(True, description="Turn columns of Brazilian numbers/dates into exact decimals/dates "
                                          "(identifiers such as CNPJ, CEP and codes with leading zeros stay text).")
    types: dict[str, ColumnType] = Field(default_factory=dict, description="Column -> type, applied before the "
                                         "automatic typing: text, money, money:cents, number, integer, date, "
                                         "date:ddmmyy, cnpj, cpf (check digits validated, failing rows listed).")


class ReadExcelParams(ReadCsvParams):
    path: DataPath = Field(SAMPLE_XLSX, description="Workbook under ETL_INPUT_DIR; a glob stacks every match.")


def _read_one(path: Path, fmt: str, options: ReadOptions) -> list[tuple[str | None, pd.DataFrame]]:
    if fmt != "xlsx" or not (options.sheet == "*" or isinstance(options.sheet, list)):
        return [(None, read_table(path, fmt, options))]
    names = sheet_names(path)
    wanted = names if options.sheet == "*" else options.sheet
    frames = []
    for sheet in wanted:
        one = options.model_copy(update={"sheet": sheet})
        frames.append((sheet if isinstance(sheet, str) else names[sheet], read_table(path, fmt, one)))
    return frames


def read_files(params: ReadCsvParams, fmt: str) -> tuple[pd.DataFrame, list[Path], dict[str, Any]]:
    """Read (and stack) the files a path or glob names; the typing's warnings and invalid documents."""
    paths = expand_paths(params.path)
    parts = []
    read_as: dict[str, Any] = {}
    warnings: list[str] = []
    for path in paths:
        for sheet, frame in _read_one(path, fmt, params.read):
            read_as = read_as or frame.attrs.get("read", {})
            warnings += frame.attrs.get("warnings", [])
            if sheet is not None:
                frame.insert(0, "sheet", sheet)
            if len(paths) > 1:
                frame.insert(0, "source_file", path.name)
            parts.append(frame)
    frame = concat(parts) if len(parts) > 1 else parts[0]
    first_row = (params.read.header_row or 0) + params.read.skip_rows + 2
    frame, found = columns.type_frame(frame, params.types, paths[0].name, decimal_mark=params.read.decimal,
                                      thousands=params.read.thousands, infer=params.typed, first_row=first_row)
    warnings += found.warnings
    for warning in warnings:
        logger.warning("%s", warning)
    extra: dict[str, Any] = {"warnings": warnings}
    if read_as:
        extra["read"] = read_as
    if found.invalid_documents:
        extra["invalid_documents"] = found.invalid_documents
        extra["invalid_document_count"] = found.invalid_count
    return frame, paths, extra


def _read_file(params: ReadCsvParams, fmt: str, name: str) -> dict[str, Any]:
    frame, paths, extra = read_files(params, fmt)
    return dataset_result(frame, save(frame, name), source=str(paths[0]), files_read=[str(p) for p in paths],
                          **extra)


@step("read_csv", ReadCsvParams, "Read a CSV file")
def read_csv(params: ReadCsvParams) -> dict[str, Any]:
    """Read a CSV (defaults: ';', decimal comma, latin-1; a UTF-8 BOM is detected); amounts become exact decimals."""
    return _read_file(params, "csv", "read_csv")


@step("read_excel", ReadExcelParams, "Read an Excel sheet")
def read_excel(params: ReadExcelParams) -> dict[str, Any]:
    """Read a workbook sheet (calamine): sheet ('*' or a list stacks sheets), header_row and skip_rows in `read`."""
    return _read_file(params, "xlsx", "read_excel")


class ReadParquetParams(_Params):
    path: DataPath = Field(SAMPLE_PARQUET, description="Parquet file under ETL_INPUT_DIR.")


@step("read_parquet", ReadParquetParams, "Read a Parquet file")
def read_parquet(params: ReadParquetParams) -> dict[str, Any]:
    """Read a Parquet file."""
    path = resolve(params.path)
    frame = read_table(path, "parquet")
    return dataset_result(frame, save(frame, "read_parquet"), source=str(path))


class ConvertParams(_Params):
    path: DataPath = Field(SAMPLE_CSV, description="CSV or Excel file to convert.")
    read: ReadOptions = Field(default_factory=ReadOptions)
    types: dict[str, ColumnType] = Field(default_factory=dict, description="Column -> type (as in read_csv).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Output name (default: the file's).")


@step("convert_parquet", ConvertParams, "Convert a file to Parquet")
def convert_parquet(params: ConvertParams) -> dict[str, Any]:
    """Convert a CSV or Excel file to Parquet in ETL_OUTPUT_DIR/converted (amounts exact, dates typed)."""
    path = resolve(params.path)
    frame, _, extra = read_files(ReadCsvParams(path=params.path, read=params.read, types=params.types),
                                 format_of(path))
    out = write_parquet(frame, runtime.output_dir() / "converted" / f"{params.name or path.stem}.parquet")
    runtime.add_artifact(out)
    return dataset_result(frame, out, source=str(path), **extra)


class FilterParams(_Params):
    dataset: DataPath | None = Field(None, description="Dataset path; default: previous_outputs.dataset, else a sample.")
    where: ExpressionText = Field("quantidade > 0", description="Keep the rows where this expression is true.")
    columns: list[str] | None = Field(None, description="Keep only these columns.")


@step("filter", FilterParams, "Filter rows")
def filter_rows(params: FilterParams) -> dict[str, Any]:
    """Keep the rows matching an expression (and optionally only some columns)."""
    frame, _ = load(params.dataset)
    Expression(params.where)
    try:
        kept = frame[mask(params.where, money.widened(frame)).to_numpy()]
    except (ArithmeticError, TypeError, ValueError) as exc:
        raise DatasetError(f"filter: {params.where!r} cannot be computed on these columns: {exc}") from None
    if params.columns:
        require(kept, params.columns, "filter")
        kept = kept[params.columns]
    kept = kept.reset_index(drop=True)
    return dataset_result(kept, save(kept, "filter"), rows_removed=int(len(frame) - len(kept)))


class JoinParams(_Params):
    left: DataPath | None = Field(None, description="Left dataset; default: previous_outputs.dataset, else a sample.")
    right: DataPath = Field(SAMPLE_XLSX, description="Right dataset.")
    on: dict[str, str] = Field({"cnpj_fundo": "CNPJ"}, description="Left column -> right column.")
    how: Literal["inner", "left", "right", "outer"] = "left"


@step("join", JoinParams, "Join two datasets")
def join(params: JoinParams) -> dict[str, Any]:
    """Join two datasets on key columns."""
    left, _ = load(params.left)
    right, _ = load(params.right)
    require(left, list(params.on), "join (left)")
    require(right, list(params.on.values()), "join (right)")
    right = right.rename(columns={v: k for k, v in params.on.items()})
    for key in params.on:
        if left[key].dtype != right[key].dtype:
            left[key], right[key] = left[key].astype("string"), right[key].astype("string")
    joined = left.merge(right, on=list(params.on), how=params.how, suffixes=("", "_right"))
    return dataset_result(joined, save(joined, "join"))


class OutputParams(_Params):
    dataset: DataPath | None = None
    format: Literal["xlsx", "csv", "parquet"] = "xlsx"
    name: str = Field("output", pattern=r"^[A-Za-z0-9_.-]+$", description="File name, without extension.")
    decimal: Literal[",", "."] = Field(",", description="CSV: decimal mark (',' writes ';'-separated 1234,56; "
                                                        "'.' writes ','-separated 1234.56).")
    thousands: Literal["", ".", ","] = Field("", description="CSV: thousands separator ('.' writes 1.234,56).")
    places: dict[str, Annotated[int, Field(ge=0, le=money.MAX_SCALE)]] = Field(
        default_factory=dict, description="CSV: places of decimal columns that are not money (rates, quotas: "
                                          "{\"taxa\": 6}); money is written with exactly 2, ties half up.")


@step("output", OutputParams, "Write a dataset out")
def output(params: OutputParams) -> dict[str, Any]:
    """Write a dataset to ETL_OUTPUT_DIR/workflow as Excel (money as #,##0.00), CSV (two places, UTF-8 BOM) or Parquet."""
    frame, _ = load(params.dataset)
    require(frame, list(params.places), "output places")
    target = runtime.output_dir() / "workflow" / f"{params.name}.{params.format}"
    if params.format == "xlsx":
        write_excel(frame, target)
    elif params.format == "csv":
        write_csv(frame, target, params.decimal, params.thousands, params.places)
    else:
        write_parquet(frame, target)
    runtime.add_artifact(target)
    return dataset_result(frame, target, file=str(target))
