"""The completeness-control config: one JSON file describes one control (SRC vs TGT)."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from etl.columns import ColumnType
from etl.datasets import ReadOptions
from etl.errors import EtlError
from etl.expr import Expression, ExpressionError

TOKENS = re.compile(r"\{(yyyy|yy|mm|dd|yyyymmdd|ddmmyyyy|yyyy-mm-dd|control)\}")


class ConfigError(EtlError):
    """The control config is not valid."""


def _parses(text: str) -> str:
    """The expression, if it parses (so a bad one fails the config check with its field path)."""
    try:
        Expression(text)
    except ExpressionError as exc:
        raise ValueError(str(exc)) from None
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreHarmonisation(_Strict):
    """Raw cleaning before columns have names."""

    header_contains: list[str] = Field(default_factory=list,
                                       description="The header row is the first row holding all these texts.")
    drop_empty_rows: bool = True
    drop_rows_matching: str | None = Field(None, description="Regex on the first non-empty cell: drop those rows "
                                                             "(e.g. totals).")
    stop_at_matching: str | None = Field(None, description="Regex on the first non-empty cell: the table ends there.")


class Harmonisation(_Strict):
    rename: dict[str, str] = Field(default_factory=dict, description="Source column -> harmonised name.")
    types: dict[str, ColumnType] = Field(default_factory=dict, description="Harmonised column -> type.")
    keep: list[str] | None = Field(None, description="Keep only these columns (after renaming).")
    invalid_cnpj: Literal["flag", "fail"] = "flag"


class Enrichment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    path: str = Field(description="File pattern under rootFileDir; dated tokens allowed; the latest file on or "
                                  "before the run date is used.")
    format: Literal["csv", "xlsx", "parquet", "pdf", "odbc"] | None = None
    read: ReadOptions = Field(default_factory=ReadOptions)
    on: dict[str, str] = Field(description="Dataset column -> lookup column.")
    columns: dict[str, str] = Field(description="Lookup column -> new column name.")
    required: bool = False


class Transform(_Strict):
    column: str | None = Field(None, description="New or replaced column.")
    expr: str | None = Field(None, description="Expression for `column`.")
    filter: str | None = Field(None, description="Keep rows where this expression is true.")

    @model_validator(mode="after")
    def _one_kind(self) -> Transform:
        if self.filter is None and (self.column is None or self.expr is None):
            raise ValueError("a transform needs either 'filter' or both 'column' and 'expr'")
        for text in (self.expr, self.filter):
            if text is not None:
                _parses(text)
        return self


class Dataset(_Strict):
    name: str = Field(description="A short label used in reports, e.g. 'ADMIN'.")
    path: str = Field(description="File pattern under rootFileDir with tokens such as {yyyymmdd}, {dd}, {mm}.")
    format: Literal["csv", "xlsx", "parquet", "pdf", "odbc", "cnab240", "cnab400", "cnab444"] | None = Field(
        None, description="Default: from the file name; CNAB files name their layout (read.layout_file overrides it).")
    read: ReadOptions = Field(default_factory=ReadOptions)
    pre_harmonisation: PreHarmonisation = Field(default_factory=PreHarmonisation)
    harmonisation: Harmonisation = Field(default_factory=Harmonisation)
    enrichment: list[Enrichment] = Field(default_factory=list)
    transform: list[Transform] = Field(default_factory=list)


class Compare(_Strict):
    column: str
    abs_tolerance: Decimal = Field(Decimal(0), ge=0, description="Exact: a difference of exactly this much is "
                                                                  "within tolerance.")
    rel_tolerance: Decimal = Field(Decimal(0), ge=0, description="Relative to the larger absolute value.")


class Rule(_Strict):
    name: str
    when: str = Field(description="Expression over the combined row: columns with _src/_tgt suffixes, diff_<col>, "
                                  "status ('matched', 'src_only', 'tgt_only'), break (true/false).")
    category: str
    explanation: str = ""

    @field_validator("when")
    @classmethod
    def _parses(cls, value: str) -> str:
        return _parses(value)


class Output(_Strict):
    report_name: str = "{control}_{yyyymmdd}.xlsx"
    matched_sample_rows: int = Field(200, ge=0, le=100_000)
    preview_rows: int = Field(20, ge=0, le=1000)


class ControlConfig(_Strict):
    control: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The control's name (folder-safe).")
    description: str = ""
    default_run_date: dt.date | None = Field(None, description="Run date when expectedRunDate is not given "
                                                               "(else the previous business day).")
    source: Dataset
    target: Dataset
    keys: list[str] = Field(min_length=1)
    compare: list[Compare] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    output: Output = Field(default_factory=Output)

    @field_validator("default_run_date", mode="before")
    @classmethod
    def _brazilian_date(cls, value: object) -> object:
        if isinstance(value, str) and re.fullmatch(r"\d{2}/\d{2}/\d{4}", value):
            return dt.datetime.strptime(value, "%d/%m/%Y").date()
        return value

    def side(self, side: str) -> Dataset:
        return self.source if side == "src" else self.target


def load_config(path: Path) -> ControlConfig:
    """Read and validate a control config; ConfigError naming the field path on a mistake."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ConfigError(f"cannot read control config {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path.name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    try:
        return ControlConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path.name} is not a valid control config: {problems}") from None


def resolve_tokens(pattern: str, run_date: dt.date, control: str) -> str:
    values = {"yyyy": f"{run_date:%Y}", "yy": f"{run_date:%y}", "mm": f"{run_date:%m}", "dd": f"{run_date:%d}",
              "yyyymmdd": f"{run_date:%Y%m%d}", "ddmmyyyy": f"{run_date:%d%m%Y}",
              "yyyy-mm-dd": f"{run_date:%Y-%m-%d}", "control": control}
    return TOKENS.sub(lambda m: values[m.group(1)], pattern)
