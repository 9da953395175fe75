"""MAPS steps: consolidate the daily workbooks, file them in fund folders, load them over ODBC.

Every step runs on the bundled samples with no parameters (``ETL_INPUT_DIR`` defaults to
``etl/samples``); outputs go to ``ETL_OUTPUT_DIR``.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from etl import datasets, odbc, results, runtime, secrets
from etl.errors import EtlError
from etl.maps import MapsError, MapsWorkbook, parse_name, plain, read_workbook
from etl.registry import step
from etl.steps.filing import output_folder, read_sheet, safe_name, write_workbook

logger = logging.getLogger(__name__)


class MapsFilesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: datasets.DataPath = Field("maps", description="Folder of MAPS workbooks (under ETL_INPUT_DIR).")
    kind: Literal["Composicao", "Posicao", "all"] = Field("all", description="Which workbooks to read.")
    date: dt.date | None = Field(None, description="Only this day's workbooks (default: every day in the folder).")
    funds: list[str] | None = Field(None, description="Only these fund codes.")


def _maps_files(params: MapsFilesParams) -> list[Path]:
    folder = datasets.resolve(params.folder)
    if not folder.is_dir():
        raise EtlError(f"{params.folder} is not a folder")
    chosen = []
    for path in sorted(folder.glob("*.xlsx")):
        try:
            kind, fund, day = parse_name(path)
        except MapsError:
            logger.info("skipping %s (not a MAPS file name)", path.name)
            continue
        if params.kind != "all" and kind != params.kind:
            continue
        if (params.date and day != params.date) or (params.funds and fund not in params.funds):
            continue
        chosen.append(path)
    if not chosen:
        raise EtlError(f"no MAPS workbooks in {params.folder} match (kind {params.kind}, date {params.date}, "
                       f"funds {params.funds})")
    return chosen


def _read_books(paths: list[Path]) -> list[MapsWorkbook]:
    books = []
    for done, path in enumerate(paths):
        runtime.check_stop()
        runtime.progress(5 + 60 * done / len(paths), f"reading {path.name}")
        books.append(read_workbook(path))
    return books


def _total_checks(book: MapsWorkbook) -> list[dict[str, Any]]:
    problems = []
    for section, total in book.totals.items():
        frame = book.sections[section]
        column = next((c for c in frame.columns if plain(c) == "valor financeiro"), None)
        if column is None or not pd.api.types.is_numeric_dtype(frame[column]):
            continue
        computed = round(float(frame[column].fillna(0).sum()), 2)
        if abs(computed - total) > 0.01:
            problems.append({"file": book.path.name, "section": section, "total_row": total, "sum_of_rows": computed})
    return problems


@step("maps_consolidate", MapsFilesParams, "Consolidate MAPS workbooks")
def maps_consolidate(params: MapsFilesParams) -> dict[str, Any]:
    """Read MAPS Composição/Posição workbooks and write one consolidated table per section (Excel + parquet)."""
    books = _read_books(_maps_files(params))
    tables: dict[str, list[pd.DataFrame]] = {}
    net_assets = []
    checks = []
    for book in books:
        net_assets.append({"FUNDO": book.fund, "DATA_INPUT": pd.Timestamp(book.day), "TIPO": book.kind,
                           "PATRIMONIO_LIQUIDO": book.net_assets})
        checks += _total_checks(book)
        for section, frame in book.sections.items():
            framed = frame.copy()
            framed.insert(0, "TIPO", book.kind)
            framed.insert(0, "DATA_INPUT", pd.Timestamp(book.day))
            framed.insert(0, "FUNDO", book.fund)
            tables.setdefault(section, []).append(framed)
    runtime.progress(70, "writing the consolidated tables")
    days = sorted({b.day for b in books})
    target = output_folder("maps", "consolidado", f"{days[0]:%Y%m%d}_{days[-1]:%Y%m%d}")
    combined = {"Patrimônio": pd.DataFrame(net_assets)}
    combined.update({section: pd.concat(frames, ignore_index=True) for section, frames in tables.items()})
    files = []
    for section, frame in combined.items():
        name = safe_name(plain(section).replace(" ", "_").replace("(%)", "pct").strip("_"))
        files.append(str(datasets.write_parquet(frame, target / f"{name}.parquet")))
    workbook = target / "MAPS_consolidado.xlsx"
    write_workbook(workbook, combined)
    for path in files + [str(workbook)]:
        runtime.add_artifact(path)
    if checks:
        logger.warning("%d section total(s) differ from the sum of their rows", len(checks))
    return {
        "files_read": len(books), "days": [d.isoformat() for d in days], "funds": sorted({b.fund for b in books}),
        "sections": {section: len(frame) for section, frame in combined.items()},
        "total_checks": checks, "workbook": str(workbook), "parquet_files": files,
        "calculation_results": results.preview(combined.get("Renda Fixa", combined["Patrimônio"])),
    }


class MapsFoldersParams(MapsFilesParams):
    mapping: datasets.DataPath = Field("mappings/MAPS_mapeamento.xlsx", description="Workbook with a 'Fundos' sheet: Fundo MAPS -> Pasta.")
    destination: str = Field("maps_arquivo", description="Folder under ETL_OUTPUT_DIR to file the workbooks in.")


@step("maps_save_excel_folders", MapsFoldersParams, "File MAPS section workbooks in folders")
def maps_save_excel_folders(params: MapsFoldersParams) -> dict[str, Any]:
    """Split each MAPS workbook into one workbook per section and file them under <fund>/<yyyy>/<mm>/."""
    funds = read_sheet(datasets.resolve(params.mapping), "Fundos")
    folders = dict(zip(funds.get("Fundo MAPS", []), funds.get("Pasta", []), strict=False))
    books = _read_books(_maps_files(params))
    root = output_folder(safe_name(params.destination))
    written, unmapped = [], []
    for book in books:
        folder_name = folders.get(book.fund)
        if not folder_name:
            unmapped.append(book.path.name)
            continue
        folder = root / safe_name(folder_name) / f"{book.day:%Y}" / f"{book.day:%m}"
        folder.mkdir(parents=True, exist_ok=True)
        for section, frame in book.sections.items():
            target = folder / safe_name(f"{book.day:%d.%m} - {book.kind} - {section} - {book.fund}.xlsx")
            write_workbook(target, {section: frame})
            written.append(str(target))
    if unmapped:
        logger.warning("no folder in the mapping for %s", ", ".join(unmapped))
    return {"files_read": len(books), "written": len(written), "files": written[:200], "unmapped": unmapped,
            "destination": str(root)}


class MapsUploadParams(MapsFilesParams):
    kind: Literal["Composicao", "Posicao"] = "Composicao"
    mapping: datasets.DataPath = Field("mappings/MAPS_mapeamento.xlsx",
                         description="Workbook with 'Tabelas' (Seção -> Tabela) and 'Colunas' sheets.")
    database: str = Field("sample", pattern=r"^[A-Za-z0-9_]+$",
                          description="Connection name: its string is the secret odbc_<name>. 'sample' without "
                                      "that secret: a SQLite database in ETL_OUTPUT_DIR (SQLite ODBC driver).")
    dry_run: bool = Field(False, description="Do the whole load, then roll it back and report the counts.")
    fast_executemany: bool = Field(False, description="pyodbc fast_executemany (never with the SQLite driver).")


def _upload_plan(mapping: Path) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    tables = read_sheet(mapping, "Tabelas")
    columns = read_sheet(mapping, "Colunas")
    kinds = {"texto", "numero", "dinheiro", "data"}
    plan: dict[str, tuple[str, list[tuple[str, str, str]]]] = {}
    for _, row in tables.iterrows():
        section, table = row["Seção"], row["Tabela"]
        spec = [(c["Coluna MAPS"], c["Coluna Banco"], c["Tipo"].lower())
                for _, c in columns[columns["Seção"] == section].iterrows()]
        bad = [kind for _, _, kind in spec if kind not in kinds]
        if bad:
            raise EtlError(f"{mapping.name}: unknown column type(s) {', '.join(bad)} (use {', '.join(sorted(kinds))})")
        if not spec:
            raise EtlError(f"{mapping.name}: section {section!r} has no columns in the 'Colunas' sheet")
        plan[plain(section)] = (table, spec)
    return plan


def _sample_database(plan: dict[str, tuple[str, list[tuple[str, str, str]]]]) -> str:
    """The demo target: a SQLite file with one table per mapped section (money as exact TEXT)."""
    path = output_folder("maps") / "maps_sample.db"
    conn_str = f"DRIVER={{SQLite3}};Database={path}"
    pyodbc = odbc.pyodbc_module()
    types = {"texto": "TEXT", "numero": "TEXT", "dinheiro": "TEXT", "data": "DATE"}
    try:
        with pyodbc.connect(conn_str, autocommit=True) as connection:
            for table, spec in plan.values():
                columns = ", ".join(f"[{target}] {types[kind]}" for _, target, kind in spec)
                connection.execute(f"CREATE TABLE IF NOT EXISTS [{table}] ([DATA_INPUT] DATE NOT NULL, "
                                   f"[FUNDO] TEXT NOT NULL, {columns})")
    except pyodbc.Error as exc:
        raise EtlError(f"cannot open the sample SQLite database through ODBC ({exc.args[-1]}); install the "
                       "SQLite ODBC driver (Debian: libsqliteodbc) or configure a database") from None
    return conn_str


@step("maps_upload_access", MapsUploadParams, "Load MAPS sections into Access/ODBC")
def maps_upload_access(params: MapsUploadParams) -> dict[str, Any]:
    """Map each MAPS section to its table, then in one transaction replace the rows of each (DATA_INPUT, FUNDO)."""
    plan = _upload_plan(datasets.resolve(params.mapping))
    books = _read_books(_maps_files(params))
    rows: dict[str, list[tuple[Any, ...]]] = {}
    columns: dict[str, list[str]] = {}
    skipped: set[str] = set()
    for book in books:
        for section, frame in book.sections.items():
            if plain(section) not in plan:
                skipped.add(section)
                continue
            table, spec = plan[plain(section)]
            missing = [source for source, _, _ in spec if source not in frame.columns]
            if missing:
                raise EtlError(f"{book.path.name}, section {section}: no column(s) {', '.join(missing)}")
            columns[table] = ["DATA_INPUT", "FUNDO"] + [target for _, target, _ in spec]
            for record in frame.to_dict("records"):
                values = [odbc.typed(record[source], kind) for source, _, kind in spec]
                rows.setdefault(table, []).append((book.day, book.fund, *values))
    try:
        conn_str = odbc.connection_string(params.database)
    except secrets.SecretError:
        if params.database != "sample":
            raise EtlError(f"no connection string for database {params.database!r}: set the secret "
                           f"odbc_{params.database} (ETL_SECRET_ODBC_{params.database.upper()})") from None
        conn_str = _sample_database(plan)
    runtime.progress(70, f"loading {sum(len(r) for r in rows.values())} rows into {len(rows)} table(s)")
    loads = [odbc.TableLoad(table, columns[table], table_rows) for table, table_rows in rows.items()]
    result = odbc.load(conn_str, loads, dry_run=params.dry_run, fast_executemany=params.fast_executemany)
    result.update({"files_read": len(books), "database": params.database,
                   "sections_without_table": sorted(skipped)})
    return result
