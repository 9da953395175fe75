"""Back-office steps on files: MAPS workbooks (consolidate, file, load over ODBC), portfolio PDFs, FIDC stock.

Every step runs on the bundled samples with no parameters (``ETL_INPUT_DIR`` defaults to
``etl/samples``); outputs go to ``ETL_OUTPUT_DIR``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from etl import brazil, datasets, money, odbc, results, runtime, secrets
from etl.errors import EtlError
from etl.maps import MapsError, MapsWorkbook, parse_name, plain, read_workbook
from etl.registry import step

logger = logging.getLogger(__name__)

MONTHS = ("Janeiro", "Fevereiro", "Março", "Abril", "Maio", "Junho", "Julho", "Agosto", "Setembro", "Outubro",
          "Novembro", "Dezembro")
SAFE_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def _safe(name: str) -> str:
    """A folder or file name valid on Windows and Linux."""
    return SAFE_NAME.sub("_", name).strip(" .") or "_"


def _sheet(path: Path, name: str) -> pd.DataFrame:
    """A mapping-workbook sheet as text, header on the first row."""
    from python_calamine import CalamineWorkbook

    try:
        book = CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # calamine raises its own types for damaged files
        raise EtlError(f"cannot read {path.name}: {exc}") from None
    if name not in book.sheet_names:
        raise EtlError(f"{path.name} has no sheet {name!r} (it has: {', '.join(book.sheet_names)})")
    rows = book.get_sheet_by_name(name).to_python()
    if not rows:
        return pd.DataFrame()
    header = [str(v).strip() for v in rows[0]]
    return pd.DataFrame([[("" if v is None else str(v).strip()) for v in r] for r in rows[1:]], columns=header)


def _output(*parts: str) -> Path:
    path = runtime.output_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- MAPS ---------------------------------------------------------------------------------------


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
    target = _output("maps", "consolidado", f"{days[0]:%Y%m%d}_{days[-1]:%Y%m%d}")
    combined = {"Patrimônio": pd.DataFrame(net_assets)}
    combined.update({section: pd.concat(frames, ignore_index=True) for section, frames in tables.items()})
    files = []
    for section, frame in combined.items():
        name = _safe(plain(section).replace(" ", "_").replace("(%)", "pct").strip("_"))
        files.append(str(datasets.write_parquet(frame, target / f"{name}.parquet")))
    workbook = target / "MAPS_consolidado.xlsx"
    _write_workbook(workbook, combined)
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


def _write_workbook(path: Path, sheets: dict[str, pd.DataFrame]) -> None:
    with datasets.replacing(path) as tmp, pd.ExcelWriter(tmp, engine="xlsxwriter", datetime_format="dd/mm/yyyy",
                                                          date_format="dd/mm/yyyy") as writer:
        for name, frame in sheets.items():
            sheet_name = _safe(name)[:31]
            frame.to_excel(writer, sheet_name=sheet_name, index=False)
            sheet = writer.sheets[sheet_name]
            sheet.freeze_panes(1, 0)
            sheet.autofilter(0, 0, max(len(frame), 1), max(len(frame.columns) - 1, 0))
            for i, column in enumerate(frame.columns):
                sheet.set_column(i, i, min(max(len(str(column)), 12) + 2, 45))


class MapsFoldersParams(MapsFilesParams):
    mapping: datasets.DataPath = Field("mappings/MAPS_mapeamento.xlsx", description="Workbook with a 'Fundos' sheet: Fundo MAPS -> Pasta.")
    destination: str = Field("maps_arquivo", description="Folder under ETL_OUTPUT_DIR to file the workbooks in.")


@step("maps_save_excel_folders", MapsFoldersParams, "File MAPS section workbooks in folders")
def maps_save_excel_folders(params: MapsFoldersParams) -> dict[str, Any]:
    """Split each MAPS workbook into one workbook per section and file them under <fund>/<yyyy>/<mm>/."""
    funds = _sheet(datasets.resolve(params.mapping), "Fundos")
    folders = dict(zip(funds.get("Fundo MAPS", []), funds.get("Pasta", []), strict=False))
    books = _read_books(_maps_files(params))
    root = _output(_safe(params.destination))
    written, unmapped = [], []
    for book in books:
        folder_name = folders.get(book.fund)
        if not folder_name:
            unmapped.append(book.path.name)
            continue
        folder = root / _safe(folder_name) / f"{book.day:%Y}" / f"{book.day:%m}"
        folder.mkdir(parents=True, exist_ok=True)
        for section, frame in book.sections.items():
            target = folder / _safe(f"{book.day:%d.%m} - {book.kind} - {section} - {book.fund}.xlsx")
            _write_workbook(target, {section: frame})
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
    tables = _sheet(mapping, "Tabelas")
    columns = _sheet(mapping, "Colunas")
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
    path = _output("maps") / "maps_sample.db"
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


# --- PDFs -----------------------------------------------------------------------------------------

DATE = r"(\d{2}/\d{2}/\d{4})"
PDF_PATTERNS = {
    "data": re.compile(rf"Data:\s*{DATE}"),
    "carteira": re.compile(r"Carteira:\s*(.+?)\s+-\s"),
    "periodo": re.compile(rf"Per[ií]odo:?\s*{DATE}\s+a\s+{DATE}"),
    "cnpj": re.compile(r"\b([0-9A-Z]{2}\.[0-9A-Z]{3}\.[0-9A-Z]{3}/[0-9A-Z]{4}-\d{2})\b"),
}


class SavePdfsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: datasets.DataPath = Field("pdfs", description="Folder of AMPLIS/QORE portfolio PDFs (under ETL_INPUT_DIR).")
    mapping: datasets.DataPath = Field("mappings/DE_PARA_Carteiras.xlsx",
                         description="'DE PARA' workbook: Carteira, CNPJ, Fundo (the fund's folder).")
    destination: str = Field("fundos", description="Folder under ETL_OUTPUT_DIR holding <fund>/06. Carteiras/...")
    move: bool = Field(False, description="Move the PDFs instead of copying them.")


def pdf_facts(path: Path) -> dict[str, Any]:
    """Data, Carteira, Período and CNPJs found in the first pages' text."""
    import pymupdf

    try:
        with pymupdf.open(path) as doc:
            text = "\n".join(doc[i].get_text() for i in range(min(3, doc.page_count)))
    except Exception as exc:  # PyMuPDF raises its own types for damaged files
        raise EtlError(f"cannot read {path.name} as PDF: {exc}") from None
    facts: dict[str, Any] = {}
    if m := PDF_PATTERNS["data"].search(text):
        facts["data"] = m.group(1)
    if m := PDF_PATTERNS["carteira"].search(text):
        facts["carteira"] = " ".join(m.group(1).split())
    if m := PDF_PATTERNS["periodo"].search(text):
        facts["periodo"] = [m.group(1), m.group(2)]
    facts["cnpjs"] = [c for c in dict.fromkeys(PDF_PATTERNS["cnpj"].findall(text)) if brazil.document_is_valid(c)]
    return facts


@step("save_pdfs", SavePdfsParams, "File portfolio PDFs")
def save_pdfs(params: SavePdfsParams) -> dict[str, Any]:
    """Rename AMPLIS/QORE PDFs to 'dd.mm - Carteira Diária - <carteira>.pdf' and file them per fund; report the rest."""
    folder = datasets.resolve(params.folder)
    mapping = _sheet(datasets.resolve(params.mapping), "DE PARA")
    by_name = {plain(r["Carteira"]): r["Fundo"] for _, r in mapping.iterrows() if r.get("Carteira")}
    by_cnpj = {brazil.clean_cnpj(pd.Series([r["CNPJ"]])).iloc[0]: r["Fundo"] for _, r in mapping.iterrows()
               if r.get("CNPJ")}
    root = _output(_safe(params.destination))
    filed, unclassified = [], []
    pdfs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".pdf")
    for done, path in enumerate(pdfs):
        runtime.check_stop()
        runtime.progress(100 * done / max(len(pdfs), 1), path.name)
        facts = pdf_facts(path)
        day_text = facts.get("data") or (facts.get("periodo") or [None, None])[1]
        fund = by_name.get(plain(facts.get("carteira", "")))
        if fund is None and facts["cnpjs"]:
            cleaned = brazil.clean_cnpj(pd.Series(facts["cnpjs"], dtype="string"))
            fund = next((by_cnpj[c] for c in cleaned if c in by_cnpj), None)
        reason = None
        if not day_text:
            reason = "no 'Data:' or 'Período' found"
        elif not facts.get("carteira"):
            reason = "no 'Carteira:' found"
        elif fund is None:
            reason = f"carteira {facts['carteira']!r} / CNPJ {', '.join(facts['cnpjs']) or '-'} is not in the DE PARA"
        if reason:
            unclassified.append({"file": path.name, "reason": reason, **facts})
            continue
        day = dt.datetime.strptime(day_text, "%d/%m/%Y").date()
        target_dir = root / _safe(fund) / "06. Carteiras" / f"{day:%Y}" / f"{day:%m} - {MONTHS[day.month - 1]}"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / _safe(f"{day:%d.%m} - Carteira Diária - {facts['carteira']}.pdf")
        (shutil.move if params.move else shutil.copy2)(path, target)
        filed.append({"file": path.name, "saved_as": str(target), "fund": fund, "date": day.isoformat()})
    if unclassified:
        logger.warning("%d PDF(s) could not be classified: %s", len(unclassified),
                       ", ".join(u["file"] for u in unclassified))
    return {"pdfs": len(pdfs), "filed": filed, "unclassified": unclassified, "destination": str(root)}


# --- FIDC estoque ----------------------------------------------------------------------------------

ESTOQUE_FILE = re.compile(r"^estoque_(?P<fund>.+?)_(?P<date>\d{8})\.csv$", re.I)
AGE_BUCKETS = [(-10**6, 0, "A vencer"), (1, 30, "Vencido 1-30"), (31, 60, "Vencido 31-60"),
               (61, 90, "Vencido 61-90"), (91, 180, "Vencido 91-180"), (181, 360, "Vencido 181-360"),
               (361, 10**6, "Vencido > 360")]
PDD_BANDS = ["A", "B", "C", "D", "E", "F", "G", "H", "WOP"]
MONEY = ["valor_nominal", "valor_presente", "valor_pdd"]


class EstoqueParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: datasets.DataPath = Field("fidc", description="Folder of estoque_<FUNDO>_<yyyymmdd>.csv files (under ETL_INPUT_DIR).")
    fund: str | None = Field(None, description="Fund code (default: the only one in the folder).")
    date: dt.date | None = Field(None, description="Stock date (default: the latest file).")
    read: datasets.ReadOptions = Field(default_factory=datasets.ReadOptions)


def _estoque_files(params: EstoqueParams) -> dict[tuple[str, dt.date], Path]:
    folder = datasets.resolve(params.folder)
    found = {}
    for path in folder.glob("*.csv"):
        if m := ESTOQUE_FILE.match(path.name):
            found[(m["fund"], dt.datetime.strptime(m["date"], "%Y%m%d").date())] = path
    return found


def read_estoque(path: Path, options: datasets.ReadOptions) -> pd.DataFrame:
    frame = datasets.read_table(path, "csv", options)
    frame.columns = [plain(c).replace(" ", "_") for c in frame.columns]
    missing = [c for c in ["seu_numero", "cedente_documento", "sacado_documento", "vencimento", *MONEY, "faixa_pdd"]
               if c not in frame.columns]
    if missing:
        raise EtlError(f"{path.name}: missing column(s) {', '.join(missing)}")
    for column in MONEY:
        frame[column] = money.parse_decimal(frame[column], options.decimal, options.thousands)[0]
    for column in ("vencimento", "data_emissao"):
        if column in frame.columns:
            frame[column] = brazil.parse_date(frame[column])
    frame["faixa_pdd"] = frame["faixa_pdd"].str.strip().str.upper()
    return frame


@step("fidc_estoque", EstoqueParams, "FIDC receivables stock")
def fidc_estoque(params: EstoqueParams) -> dict[str, Any]:
    """Validate, age and total a FIDC estoque; compare with the previous day by seu_numero; Excel + parquet."""
    files = _estoque_files(params)
    funds = sorted({fund for fund, _ in files})
    if not funds:
        raise EtlError(f"no estoque_<FUNDO>_<yyyymmdd>.csv files in {params.folder}")
    fund = params.fund or (funds[0] if len(funds) == 1 else None)
    if fund is None:
        raise EtlError(f"several funds in {params.folder} ({', '.join(funds)}): choose one with 'fund'")
    days = sorted(day for f, day in files if f == fund)
    day = params.date or (days[-1] if days else None)
    if day not in days:
        raise EtlError(f"no estoque file for {fund} on {day} (have: {', '.join(d.isoformat() for d in days)})")
    earlier = [d for d in days if d < day]
    stock = read_estoque(files[(fund, day)], params.read)
    runtime.progress(30, "validating documents and ageing")
    invalid = []
    for column in ("cedente_documento", "sacado_documento"):
        bad = stock[~stock[column].fillna("").map(brazil.document_is_valid)]
        invalid += [{"seu_numero": r["seu_numero"], "coluna": column, "documento": r[column]} for _, r in bad.iterrows()]
    stock["dias_atraso"] = (pd.Timestamp(day) - stock["vencimento"]).dt.days.clip(lower=0).astype("Int64")
    overdue = (pd.Timestamp(day) - stock["vencimento"]).dt.days
    stock["faixa_atraso"] = "A vencer"
    for low, high, label in AGE_BUCKETS[1:]:
        stock.loc[(overdue >= low) & (overdue <= high), "faixa_atraso"] = label
    unknown_bands = sorted(set(stock["faixa_pdd"].dropna()) - set(PDD_BANDS))

    def totals(by: str | list[str]) -> pd.DataFrame:
        grouped = stock.groupby(by, dropna=False)
        out = grouped[MONEY].sum()
        for column in MONEY:
            out[column] = money.narrow(out[column], money.MONEY_SCALE)
        out.insert(0, "quantidade", grouped.size())
        return out.reset_index()

    by_cedente = totals(["cedente_documento", "cedente_nome"] if "cedente_nome" in stock else "cedente_documento")
    by_sacado = totals(["sacado_documento", "sacado_nome"] if "sacado_nome" in stock else "sacado_documento")
    by_band = totals("faixa_pdd")
    by_band["ordem"] = by_band["faixa_pdd"].map({b: i for i, b in enumerate(PDD_BANDS)})
    by_band = by_band.sort_values("ordem").drop(columns="ordem")
    by_age = totals("faixa_atraso")
    by_age["ordem"] = by_age["faixa_atraso"].map({label: i for i, (_, _, label) in enumerate(AGE_BUCKETS)})
    by_age = by_age.sort_values("ordem").drop(columns="ordem")

    movement = pd.DataFrame(columns=["seu_numero", "movimento", "valor_presente"])
    previous_day = earlier[-1] if earlier else None
    if previous_day:
        runtime.progress(60, f"comparing with {previous_day:%d/%m/%Y}")
        before = read_estoque(files[(fund, previous_day)], params.read)
        today_ids, before_ids = set(stock["seu_numero"]), set(before["seu_numero"])
        written_off_now = set(stock.loc[(stock["faixa_pdd"] == "WOP") |
                                        stock.get("situacao", pd.Series(dtype="string")).fillna("").str.contains(
                                            "baixado", case=False), "seu_numero"])
        written_off_before = set(before.loc[before["faixa_pdd"] == "WOP", "seu_numero"])
        rows = ([(n, "novo") for n in sorted(today_ids - before_ids)] +
                [(n, "liquidado") for n in sorted(before_ids - today_ids)] +
                [(n, "baixado") for n in sorted((written_off_now - written_off_before) & before_ids)])
        values = pd.concat([stock, before]).drop_duplicates("seu_numero").set_index("seu_numero")["valor_presente"]
        movement = pd.DataFrame(rows, columns=["seu_numero", "movimento"])
        movement["valor_presente"] = movement["seu_numero"].map(values)
    runtime.progress(80, "writing the report")
    target = _output("fidc", _safe(fund))
    parquet = datasets.write_parquet(stock, target / f"estoque_{fund}_{day:%Y%m%d}.parquet")
    summary = pd.DataFrame([
        ("Fundo", fund), ("Data", day.strftime("%d/%m/%Y")),
        ("Dia anterior", previous_day.strftime("%d/%m/%Y") if previous_day else "—"),
        ("Recebíveis", len(stock)), ("Valor nominal", money.total(stock["valor_nominal"])),
        ("Valor presente", money.total(stock["valor_presente"])), ("PDD", money.total(stock["valor_pdd"])),
        ("Documentos inválidos", len(invalid)),
        ("Novos", int((movement["movimento"] == "novo").sum())),
        ("Liquidados", int((movement["movimento"] == "liquidado").sum())),
        ("Baixados", int((movement["movimento"] == "baixado").sum())),
    ], columns=["Item", "Valor"])
    report = target / f"Estoque_{fund}_{day:%Y%m%d}.xlsx"
    _write_workbook(report, {"Resumo": summary, "Por cedente": by_cedente, "Por sacado": by_sacado,
                             "Faixa PDD": by_band, "Atraso": by_age, "Movimentação": movement,
                             "Documentos inválidos": pd.DataFrame(invalid, columns=["seu_numero", "coluna", "documento"]),
                             "Estoque": stock})
    for path in (parquet, report):
        runtime.add_artifact(path)
    counts = movement["movimento"].value_counts().to_dict()
    return {
        "fund": fund, "date": day.isoformat(), "previous_date": previous_day.isoformat() if previous_day else None,
        "receivables": len(stock), "valor_presente": money.json_text(money.total(stock["valor_presente"])),
        "valor_pdd": money.json_text(money.total(stock["valor_pdd"])), "invalid_documents": invalid,
        "unknown_pdd_bands": unknown_bands,
        "movement": {k: int(counts.get(k, 0)) for k in ("novo", "liquidado", "baixado")},
        "histogram_data": {"labels": by_band["faixa_pdd"].tolist(),
                           "values": [money.json_text(v) for v in by_band["valor_presente"]]},
        "calculation_results": results.preview(by_age), "report": str(report), "parquet": str(parquet),
    }

