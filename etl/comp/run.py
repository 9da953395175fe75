"""One completeness-control run: its v1 parameters, its config and its run folder
``<tempFilePath>/<control>/<run date>/``, where each step finds what the one before it saved."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from etl import runtime
from etl.calendar import previous_business_day
from etl.comp import stages
from etl.comp.config import ConfigError, ControlConfig, load_config
from etl.datasets import DataPath, DatasetError, read_parquet, resolve
from etl.results import preview
from etl.writers import write_parquet


class CompParams(BaseModel):
    """The v1 parameters shared by every completeness-control step (all optional)."""

    model_config = ConfigDict(extra="forbid")

    expectedRunDate: str | None = Field(None, description="Run date, dd/mm/yyyy or yyyy-mm-dd. Default: the "
                                                          "config's default_run_date, else the previous business day.")
    inputConfigFilePath: DataPath | None = Field(None, description="Folder of control configs (default "
                                                              "ETL_INPUT_DIR/controls).")
    inputConfigFilePattern: str = Field("*.json", max_length=200, description="Which config in that folder (must "
                                        "match one file); a file-name pattern that stays inside the folder.")
    rootFileDir: DataPath | None = Field(None, description="Root of the input files (default ETL_INPUT_DIR).")
    runEnv: str = Field("dev", max_length=20, description="Environment label, recorded in the report.")
    tempFilePath: WorkPath | None = Field(None, description="Root of run folders (default ETL_WORK_DIR; relative "
                                                           "paths are under it; it must stay inside the data folders).")

    @field_validator("inputConfigFilePattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        parts = value.replace("\\", "/").split("/")
        if not value or value.startswith(("/", "\\")) or ":" in value or ".." in parts:
            raise ValueError("must be a file-name pattern inside inputConfigFilePath (no absolute path, drive or '..')")
        return value

    @field_validator("expectedRunDate")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is not None:
            parse_run_date(value)
        return value


def _within_work_roots(value: str) -> str:
    try:
        resolve(value, base=runtime.work_root())
    except DatasetError:
        raise ValueError(f"{value!r} is outside the folders steps may use "
                         "(ETL_INPUT_DIR, ETL_OUTPUT_DIR, ETL_WORK_DIR)") from None
    return value


# A run-folder root (v1 tempFilePath): relative to ETL_WORK_DIR; refused at submit (422) if it leaves the roots.
WorkPath = Annotated[str, AfterValidator(_within_work_roots)]


def parse_run_date(text: str) -> dt.date:
    for fmt in ("%d/%m/%Y", "%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date (dd/mm/yyyy or yyyy-mm-dd)")


@dataclass
class Run:
    """One control on one date: its config and its run folder."""

    config: ControlConfig
    config_path: Path
    run_date: dt.date
    root: Path
    run_dir: Path
    env: str

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def load(self, name: str, made_by: str, columns: list[str] | None = None) -> pd.DataFrame:
        path = self.path(name)
        if not path.exists():
            raise stages.DataError(f"{path.name} is missing in {self.run_dir}: run {made_by} first "
                                   f"(for control {self.config.control}, {self.run_date:%d/%m/%Y})")
        return read_parquet(path, columns)

    def save(self, frame: pd.DataFrame, name: str) -> Path:
        return write_parquet(frame, self.path(name))

    def result(self, frame: pd.DataFrame | None = None, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"control": self.config.control, "run_date": f"{self.run_date:%Y-%m-%d}",
                               "expectedRunDate": f"{self.run_date:%d/%m/%Y}", "run_dir": str(self.run_dir),
                               "runEnv": self.env}
        if frame is not None:
            out["row_count"] = int(len(frame))
            out["calculation_results"] = preview(frame, self.config.output.preview_rows)
        return {**out, **extra}


def _fill_from_previous(params: CompParams) -> CompParams:
    """v1 chains pass the parameters on in previous_outputs; use them where these are unset."""
    earlier = runtime.previous_outputs()
    values = params.model_dump()
    for source in (earlier, earlier.get("parameters") if isinstance(earlier.get("parameters"), dict) else {}):
        for name, value in source.items():
            if name in values and values[name] in (None, "*.json", "dev") and value is not None:
                values[name] = value
    return CompParams.model_validate(values)


def _inside_roots(path: Path) -> bool:
    try:
        resolve(path)
    except DatasetError:
        return False
    return path.is_file()


def open_run(params: CompParams) -> Run:
    params = _fill_from_previous(params)
    config_dir = resolve(params.inputConfigFilePath or "controls")
    # Only files inside the data folders are ever opened, whatever the pattern matched.
    matches = sorted(m for m in config_dir.glob(params.inputConfigFilePattern) if _inside_roots(m))
    if not matches:
        raise ConfigError(f"no control config matches {params.inputConfigFilePattern!r} in {config_dir}")
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise ConfigError(f"{len(matches)} configs match {params.inputConfigFilePattern!r} in {config_dir} ({names});"
                          " narrow inputConfigFilePattern")
    config = load_config(matches[0])
    if params.expectedRunDate:
        run_date = parse_run_date(params.expectedRunDate)
    else:
        run_date = config.default_run_date or previous_business_day(dt.date.today())
    root = resolve(params.rootFileDir) if params.rootFileDir else runtime.input_dir()
    temp = resolve(params.tempFilePath, base=runtime.work_root()) if params.tempFilePath else runtime.work_root()
    run_dir = temp / config.control / f"{run_date:%Y-%m-%d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return Run(config, matches[0], run_date, root, run_dir, params.runEnv)
