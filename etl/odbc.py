"""Loads into Access or any ODBC database with pyodbc: replace a (date, fund) slice in one transaction.

Connection strings are never taken from a request: a step names a connection, and its string
comes from the secret ``odbc_<name>`` (``ETL_SECRET_ODBC_<NAME>`` or the encrypted file), e.g.

- Windows, Access: ``DRIVER={Microsoft Access Driver (*.mdb, *.accdb)};DBQ=C:\\dados\\maps.accdb``
- Linux, SQLite (Debian ``unixodbc`` + ``libsqliteodbc``): ``DRIVER={SQLite3};Database=/srv/maps.db``
- PostgreSQL (Debian ``odbc-postgresql``): ``DRIVER={PostgreSQL Unicode};Server=...;Database=...;UID=...;PWD=...``

Money is bound as ``Decimal`` (never float), so Access CURRENCY, PostgreSQL NUMERIC and SQLite
TEXT columns store it exactly. ``fast_executemany`` is off unless a connection asks for it: it
crashes the SQLite ODBC driver and rounds Decimals through doubles.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from etl import runtime, secrets
from etl.errors import EtlError, StepStopped

logger = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ]{0,63}$")
CENT = decimal.Decimal("0.01")


class OdbcError(EtlError):
    """The database load failed (and was rolled back)."""


def pyodbc_module() -> Any:
    """pyodbc, imported only when a load runs (it needs the system's ODBC driver manager)."""
    try:
        import pyodbc
    except ImportError as exc:
        raise OdbcError(f"pyodbc cannot load the ODBC driver manager ({exc}); install unixODBC "
                        "(Debian/Ubuntu: apt-get install unixodbc; the SQLite driver is libsqliteodbc)") from None
    return pyodbc


def connection_string(name: str) -> str:
    return secrets.lookup(f"odbc_{name}")


def quote(identifier: str, style: str) -> str:
    if not IDENTIFIER.match(identifier):
        raise OdbcError(f"{identifier!r} is not a plain table or column name (letters, digits, _ and spaces)")
    return f"[{identifier}]" if style == "brackets" else f'"{identifier}"'


def quote_style(conn_str: str) -> str:
    """Access and SQLite take [brackets]; everything else the standard "double quotes"."""
    lowered = conn_str.lower()
    return "brackets" if "access" in lowered or "sqlite" in lowered or "sql server" in lowered else "double"


def money(value: Any) -> decimal.Decimal | None:
    """An exact amount with two decimals (from the shortest text of a float, never its binary value)."""
    number = exact(value)
    return None if number is None else number.quantize(CENT, rounding=decimal.ROUND_HALF_EVEN)


def exact(value: Any) -> decimal.Decimal | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    try:
        return decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise OdbcError(f"{value!r} is not a number") from None


@dataclass
class TableLoad:
    """Rows for one table, replacing what the table holds for each (date, fund) they cover."""

    table: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    slice_columns: tuple[str, str] = ("DATA_INPUT", "FUNDO")


def load(conn_str: str, loads: Sequence[TableLoad], *, dry_run: bool = False, fast_executemany: bool = False,
         batch: int = 1000) -> dict[str, Any]:
    """Delete each (date, fund) slice and insert the new rows, all in one transaction.

    Any failure rolls everything back and names the table and the row; ``dry_run`` does the
    whole load and rolls back, so its counts are what a real run would do.
    """
    pyodbc = pyodbc_module()
    style = quote_style(conn_str)
    started = time.monotonic()
    try:
        connection = pyodbc.connect(conn_str, autocommit=False, timeout=30)
    except pyodbc.Error as exc:
        raise OdbcError(f"cannot connect: {secrets.mask_text(_odbc_message(exc))}") from None
    counts: dict[str, dict[str, int]] = {}
    try:
        cursor = connection.cursor()
        cursor.fast_executemany = fast_executemany
        with runtime.on_stop(lambda: _cancel(cursor)):
            for item in loads:
                counts[item.table] = _load_table(cursor, item, style, batch)
        runtime.check_stop()
        if dry_run:
            connection.rollback()
        else:
            connection.commit()
    except BaseException as exc:
        _rollback(connection)
        if isinstance(exc, StepStopped) or runtime.stop_requested():
            raise StepStopped("the load was stopped and rolled back") from None
        if isinstance(exc, EtlError):
            raise
        if isinstance(exc, pyodbc.Error):
            raise OdbcError(f"load rolled back: {secrets.mask_text(_odbc_message(exc))}") from None
        raise
    finally:
        connection.close()
    inserted = sum(c["inserted"] for c in counts.values())
    seconds = time.monotonic() - started
    return {"tables": counts, "inserted": inserted, "deleted": sum(c["deleted"] for c in counts.values()),
            "dry_run": dry_run, "committed": not dry_run, "seconds": round(seconds, 3),
            "rows_per_second": round(inserted / seconds) if seconds > 0 else None}


def _load_table(cursor: Any, item: TableLoad, style: str, batch: int) -> dict[str, int]:
    table = quote(item.table, style)
    date_column, fund_column = (quote(c, style) for c in item.slice_columns)
    positions = [item.columns.index(c) for c in item.slice_columns]
    slices = sorted({(row[positions[0]], row[positions[1]]) for row in item.rows}, key=str)
    deleted = 0
    for day, fund in slices:
        cursor.execute(f"DELETE FROM {table} WHERE {date_column} = ? AND {fund_column} = ?", day, fund)
        deleted += max(cursor.rowcount, 0)
    names = ", ".join(quote(c, style) for c in item.columns)
    marks = ", ".join("?" for _ in item.columns)
    sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"
    for start in range(0, len(item.rows), batch):
        runtime.check_stop()
        chunk = item.rows[start:start + batch]
        try:
            cursor.executemany(sql, chunk)
        except Exception as exc:
            row = _failing_row(cursor, sql, chunk)
            where = f"row {start + row + 1}" if row is not None else f"rows {start + 1}-{start + len(chunk)}"
            raise OdbcError(f"insert into {item.table} failed at {where}: "
                            f"{_odbc_message(exc)}; nothing was changed (rolled back)") from None
    logger.info("%s: %d row(s) deleted for %d slice(s), %d inserted", item.table, deleted, len(slices), len(item.rows))
    return {"deleted": deleted, "inserted": len(item.rows), "slices": len(slices)}


def _failing_row(cursor: Any, sql: str, chunk: list[tuple[Any, ...]]) -> int | None:
    # Which row broke a batch: retried one at a time inside the (already doomed) transaction.
    for index, row in enumerate(chunk):
        try:
            cursor.execute(sql, row)
        except Exception:
            return index
    return None


def _odbc_message(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = str(args[1] if len(args) > 1 else args[0] if args else exc)
    return re.sub(r"\s*\(\d+\)\s*\(SQL\w+\)$", "", text).strip()


def _cancel(cursor: Any) -> None:
    try:
        cursor.cancel()
    except Exception:  # noqa: BLE001 - the driver may not support cancelling; the stop check follows
        pass


def _rollback(connection: Any) -> None:
    try:
        connection.rollback()
    except Exception:  # noqa: BLE001 - a broken connection rolls back on close
        logger.warning("rollback failed; the connection is closed without committing")


def typed(value: Any, kind: str) -> Any:
    """A cell converted for binding: texto, numero, dinheiro, data."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind == "dinheiro":
        return money(value)
    if kind == "numero":
        return exact(value)
    if kind == "data":
        if hasattr(value, "date") and callable(value.date):
            return value.date()
        if isinstance(value, dt.date):
            return value
        return dt.datetime.strptime(str(value), "%d/%m/%Y").date()
    return str(value)


def rows_of(records: Iterable[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(record.get(c) for c in columns) for record in records]
