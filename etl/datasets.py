"""Reading and writing datasets: CSV (Brazilian defaults), Excel (calamine), Parquet; safe paths."""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import io
import logging
import math
import os
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from etl import money, runtime, sniff
from etl.errors import EtlError

logger = logging.getLogger(__name__)



class DatasetError(EtlError):
    """A dataset could not be read or written."""


class ReadOptions(BaseModel):
    """How to read a file. CSV defaults follow Brazilian exports: ';', decimal comma, latin-1."""

    model_config = ConfigDict(extra="forbid")

    separator: str | None = Field(None, max_length=5, description="CSV: field separator; default: sniffed from "
                                                                  "the first lines (';', TAB, ',' or '|').")
    encoding: str | None = Field(None, max_length=20, description="CSV: text encoding; default: UTF-8 (BOM or "
                                                                  "not) when the bytes are UTF-8, else cp1252/latin-1.")
    decimal: Literal[",", "."] = Field(",", description="Decimal mark of numbers: ',' (1.234,56) or '.' (1,234.56).")
    thousands: Literal[".", ",", " ", ""] | None = Field(
        None, description="Thousands separator; default: '.' with a decimal comma (a lone '1.500' is 1500), "
                          "',' with a decimal point ('1.500' is 1.5).")
    sheet: str | int | list[str | int] = Field(0, description="Excel: a sheet name or 0-based index; '*' or a "
                                                            "list stacks sheets (workflow reads), adding a sheet "
                                                            "column.")
    header_row: int | None = Field(0, ge=0, description="0-based row holding the column names; null: no header.")
    skip_rows: int = Field(0, ge=0)
    pages: list[int] | None = Field(None, description="PDF: 1-based pages to read tables from (default: all).")
    layout_file: str | None = Field(None, description="CNAB: a JSON layout file (under the data folders) whose "
                                                      "layouts override the bundled ones of the same name.")
    database: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$",
                                 description="ODBC (.sql files): connection name; its string is the secret odbc_<name>.")


def allowed_roots() -> list[Path]:
    return [runtime.input_dir(), runtime.output_dir(), runtime.work_root()]


def resolve(path: str | Path, base: Path | None = None) -> Path:
    """An input path made absolute (relative to ``base`` or ETL_INPUT_DIR) and kept inside the data roots."""
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = (base or runtime.input_dir()) / candidate
    candidate = candidate.resolve()
    roots = [root.resolve() for root in allowed_roots()]
    if not any(candidate == root or root in candidate.parents for root in roots):
        raise DatasetError(f"{path} is outside the folders steps may use ({', '.join(str(r) for r in roots)})")
    return candidate



def expand_paths(pattern: str) -> list[Path]:
    """The files a path names; a glob (``*``, ``?``, ``[``) names every match, in name order."""
    if not any(mark in pattern for mark in "*?["):
        path = resolve(pattern)
        if not path.exists():
            raise DatasetError(f"{pattern} does not exist; {_folder_listing(path.parent)}")
        return [path]
    base = resolve(".")
    matches = sorted(p.resolve() for p in base.glob(pattern) if p.is_file()) if not Path(pattern).is_absolute() \
        else sorted(Path(p).resolve() for p in glob.glob(pattern) if Path(p).is_file())
    matches = [resolve(p) for p in matches]
    if not matches:
        folder = resolve(str(Path(pattern).parent)) if "*" not in str(Path(pattern).parent) else base
        raise DatasetError(f"no file matches {pattern}; {_folder_listing(folder)}")
    return matches


def _folder_listing(folder: Path, limit: int = 30) -> str:
    if not folder.is_dir():
        return f"the folder {folder.name or folder} does not exist either"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    shown = ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
    return f"{folder.name or folder} holds: {shown or 'nothing'}"


def concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack tables by column name; a column that is money in some parts stays exact in the whole."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(dict.fromkeys(c for part in parts for c in part.columns))
    for name in names:
        decimals = [part[name] for part in parts if name in part.columns and money.is_decimal(part[name])]
        if not decimals:
            continue
        scale = max(money.scale_of(v) for v in decimals)
        for part in parts:
            if name in part.columns:
                values = money.to_decimal(part[name], scale)
                part[name] = pd.Series(pd.arrays.ArrowExtensionArray(
                    pc.cast(pa.array(values.array), pa.decimal128(38, scale))), index=part.index)
    whole = pd.concat(parts, ignore_index=True)
    for name in names:
        if money.is_decimal(whole[name]):
            whole[name] = money.narrow(whole[name])
    return whole


def _within_roots(value: str) -> str:
    try:
        resolve(value)
    except DatasetError:
        raise ValueError(f"{value!r} is outside the folders steps may use "
                         "(ETL_INPUT_DIR, ETL_OUTPUT_DIR, ETL_WORK_DIR)") from None
    return value


# A path parameter (relative to ETL_INPUT_DIR or absolute): one that leaves the data folders is
# refused when the task is submitted (422), not when it runs.
DataPath = Annotated[str, AfterValidator(_within_roots)]

def _cell_text(value: Any, decimal_mark: str = ",") -> str | None:
    """A spreadsheet or database cell as a user would have typed it, with the reading's decimal mark
    (so the same ``read.decimal`` reads it back exactly)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        # ODBC NUMERIC/DECIMAL cells: every place as the database holds it (NUMERIC(18,3) 1.500 is 1,500),
        # never str()'s "1.500", which the decimal comma would read as 1500.
        return format(value, "f").replace(".", decimal_mark) if value.is_finite() else None
    if isinstance(value, float):
        text = f"{value:.15g}"
        if "e" in text:
            text = f"{value:.10f}".rstrip("0").rstrip(".")
        return text.replace(".", decimal_mark)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%d/%m/%Y") if value.time() == dt.time() else value.strftime("%d/%m/%Y %H:%M:%S")
    if isinstance(value, dt.date):
        return value.strftime("%d/%m/%Y")
    return str(value).strip() or None


def _text_frame(rows: list[list[Any]], decimal_mark: str = ",") -> pd.DataFrame:
    width = max((len(r) for r in rows), default=0)
    data = {f"c{i}": [(_cell_text(r[i], decimal_mark) if i < len(r) else None) for r in rows] for i in range(width)}
    return pd.DataFrame(data, dtype="string")


def read_raw(path: Path, fmt: str, options: ReadOptions) -> pd.DataFrame:
    """Every cell as text (columns c0, c1, ...), nothing interpreted: what pre-harmonisation cleans."""
    try:
        if fmt == "csv":
            text, encoding = sniff.decode(path.read_bytes(), options.encoding)
            markup = sniff.looks_like_markup(text)
            if markup:
                raise DatasetError(f"{path.name} is {markup}, not a CSV file (read an XML report with "
                                   "read_xml_report)")
            separator = options.separator or sniff.separator(text)
            frame = pd.read_csv(io.StringIO(text), sep=separator, header=None, dtype="string",
                                skiprows=options.skip_rows, keep_default_na=False, na_values=[""],
                                skip_blank_lines=False, engine="c" if len(separator) == 1 else "python")
            frame.columns = [f"c{i}" for i in range(frame.shape[1])]
            warning = sniff.one_column_warning(text, separator, frame.shape[1])
            frame.attrs["read"] = {"encoding": encoding, "separator": separator,
                                   "sniffed": [k for k, v in (("encoding", options.encoding),
                                                              ("separator", options.separator)) if v is None]}
            frame.attrs["warnings"] = [f"{path.name}: {warning}"] if warning else []
            return frame
        if fmt == "xlsx":
            from python_calamine import CalamineWorkbook

            book = CalamineWorkbook.from_path(str(path))
            names = book.sheet_names
            sheet = options.sheet
            if isinstance(sheet, list) or sheet == "*":
                raise DatasetError(f"{path.name}: read one sheet at a time here (the workflow read_excel step "
                                   f"stacks several); its sheets are: {', '.join(names)}")
            if isinstance(sheet, int) and not -len(names) <= sheet < len(names):
                raise DatasetError(f"{path.name} has {len(names)} sheet(s), so there is no sheet {sheet}; "
                                   f"its sheets are: {', '.join(names)}")
            if isinstance(sheet, str) and sheet not in names:
                raise DatasetError(f"{path.name} has no sheet {sheet!r}; its sheets are: {', '.join(names)}")
            sheet = sheet if isinstance(sheet, str) else names[sheet]
            rows = book.get_sheet_by_name(sheet).to_python(skip_empty_area=False)
            return _text_frame(rows[options.skip_rows:], options.decimal)
        if fmt == "pdf":
            return _text_frame(pdf_table_rows(path, options.pages)[options.skip_rows:], options.decimal)
        if fmt == "odbc":
            return _text_frame(odbc_query_rows(path, options)[options.skip_rows:], options.decimal)
        if fmt in ("cnab240", "cnab400", "cnab444"):
            from etl import cnab

            return cnab.raw_table(path, fmt, resolve(options.layout_file) if options.layout_file else None)
        if fmt == "parquet":
            frame = pd.read_parquet(path)
            header = pd.DataFrame([list(map(str, frame.columns))], columns=frame.columns)
            frame = pd.concat([header, frame.astype("string")], ignore_index=True)
            frame.columns = [f"c{i}" for i in range(frame.shape[1])]
            return frame.astype("string")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is not {options.encoding} text ({exc.reason} at byte {exc.start}); "
                           "set read.encoding (or leave it out to have it sniffed)") from None
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DatasetError(f"cannot read {path.name} as {fmt}: {exc}") from None
    raise DatasetError(f"unknown format {fmt!r} (csv, xlsx, parquet, pdf, odbc, cnab240, cnab400, cnab444)")


def sheet_names(path: Path) -> list[str]:
    from python_calamine import CalamineWorkbook

    try:
        return list(CalamineWorkbook.from_path(str(path)).sheet_names)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path.name} as xlsx: {exc}") from None


def pdf_table_rows(path: Path, pages: list[int] | None = None) -> list[list[Any]]:
    """The rows of every ruled table in a PDF, each cell's words joined in reading order.

    Tables are found from their lines only (``use_layout=False``: the layout model costs ~10x per
    page), and cells are filled from the page's words rather than ``Table.extract()``, which
    splits numbers such as ``1,108762`` across lines. A header row repeated on later pages is
    dropped.
    """
    import pymupdf

    rows: list[list[Any]] = []
    with pymupdf.open(path) as doc:
        for number in pages or range(1, doc.page_count + 1):
            if not 1 <= number <= doc.page_count:
                raise DatasetError(f"{path.name} has {doc.page_count} page(s); there is no page {number}")
            page = doc[number - 1]
            words = page.get_text("words")
            for table in page.find_tables(use_layout=False).tables:
                for row in table.rows:
                    cells = []
                    for cell in row.cells:
                        if cell is None:
                            cells.append(None)
                            continue
                        x0, y0, x1, y1 = cell
                        inside = sorted((w for w in words if x0 <= (w[0] + w[2]) / 2 <= x1
                                         and y0 <= (w[1] + w[3]) / 2 <= y1), key=lambda w: (round(w[3]), w[0]))
                        cells.append(" ".join(w[4] for w in inside) or None)
                    if rows and cells == rows[0]:
                        continue
                    rows.append(cells)
    if not rows:
        raise DatasetError(f"{path.name}: no ruled table found")
    return rows


def odbc_query_rows(path: Path, options: ReadOptions) -> list[list[Any]]:
    """The header and rows of the query in a ``.sql`` file, run on the named ODBC connection."""
    from etl import odbc

    if not options.database:
        raise DatasetError(f"{path.name}: an ODBC query needs read.database (a connection name)")
    sql = path.read_text(encoding="utf-8")
    pyodbc = odbc.pyodbc_module()
    try:
        with pyodbc.connect(odbc.connection_string(options.database), autocommit=True, timeout=30) as connection:
            cursor = connection.execute(sql)
            header = [column[0] for column in cursor.description]
            return [header] + [list(row) for row in cursor.fetchall()]
    except pyodbc.Error as exc:
        raise DatasetError(f"{path.name}: the query failed: {exc.args[-1]}") from None


def read_table(path: Path, fmt: str | None = None, options: ReadOptions | None = None) -> pd.DataFrame:
    """A file as a table with its header row as column names (values left as text for CSV/Excel)."""
    options = options or ReadOptions()
    fmt = fmt or format_of(path)
    if fmt == "parquet":
        return read_parquet(path)
    raw = read_raw(path, fmt, options)
    if options.header_row is None:
        return raw
    if options.header_row >= len(raw):
        raise DatasetError(f"{path.name} has {len(raw)} rows; header_row {options.header_row} is beyond them")
    cells = list(raw.iloc[options.header_row])
    header = [str(v) if v is not None and not pd.isna(v) else f"c{i}" for i, v in enumerate(cells)]
    frame = raw.iloc[options.header_row + 1:].reset_index(drop=True)
    frame.columns = unique_names(header)
    frame = frame.dropna(how="all").reset_index(drop=True)
    warning = sniff.header_warning([v if v is not None and not pd.isna(v) else None for v in cells])
    frame.attrs = {"read": raw.attrs.get("read", {}),
                   "warnings": raw.attrs.get("warnings", []) + ([f"{path.name}: {warning}"] if warning else [])}
    return frame


def _decimal_dtype(kind: Any) -> pd.ArrowDtype | None:
    import pyarrow as pa

    return pd.ArrowDtype(kind) if pa.types.is_decimal(kind) else None


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A parquet file (or some of its columns) as a frame; decimal columns stay exact (decimal128, not
    Python objects)."""
    import pyarrow.parquet as pq

    try:
        if columns is not None:
            present = pq.read_schema(path).names
            columns = [c for c in columns if c in present] or present[:1]
        return pq.read_table(path, columns=columns).to_pandas(types_mapper=_decimal_dtype)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path.name} as parquet: {exc}") from None


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        name = name.strip() or "column"
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def format_of(path: Path) -> Literal["csv", "xlsx", "parquet", "pdf", "odbc"]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".xlsx", ".xlsm", ".xls"):
        return "xlsx"
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".pdf":
        return "pdf"
    if suffix == ".sql":
        return "odbc"
    raise DatasetError(f"cannot tell the format of {path.name} (.csv, .xlsx, .parquet, .pdf or .sql)")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write into; once written it is synced and replaces
    ``path`` (a reader never sees half a file), and if writing fails it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "r+b") as written:
            os.fsync(written.fileno())
        try:
            os.replace(tmp, path)
        except PermissionError:
            raise DatasetError(f"cannot replace {path}: it is open in another program (close it and "
                               "run the step again)") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """A parquet file, atomically. Decimal columns are not dictionary-encoded: amounts are nearly all
    distinct, and trying the dictionary made writing them six times slower."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    dictionary = [f.name for f in table.schema if not pa.types.is_decimal(f.type)]
    with replacing(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=dictionary)
    return path
