"""The diskcache side of the local store: a JSON-only disk, opening, and the range reads diskcache lacks.

The only module that touches diskcache's SQL directly.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import diskcache
import orjson

from api.store.keys import K_META

CACHE_DB = "cache.db"
RANGE_END = "\uffff"
# A commit copies the write-ahead log into the database itself only past this many pages (SQLite's
# default is 1,000): checkpoint.py copies it in the background long before, so this is the safety
# net for a process whose checkpoints fell behind. After a restart of the log its file is cut back
# to JOURNAL_LIMIT_BYTES.
WAL_AUTOCHECKPOINT_PAGES = 10_000
JOURNAL_LIMIT_BYTES = 4 * 1024 * 1024
# No memory-mapped reads (diskcache maps 64 MB by default): a connection that begins a read after
# another process committed unmaps and maps the file again, and in a server whose workers all
# write that is nearly every transaction. Unmapping flushes the TLB of every core (an IPI each, dear
# in a VM). Without the map, reads come from SQLite's page cache or a pread: 40 us less CPU per read
# after a foreign commit, and a burst of no-op tasks 0.88x the CPU (benchmarks in the README).
MMAP_BYTES = 0
# Each thread's connection keeps its own page cache (diskcache's default: 8,192 pages, 32 MB), which
# another process's commit empties anyway; with 8 threads reading a 300 MB store at random that was
# 306 MB of the worker's memory against 49 MB with 512 pages, and each read took 30 us of CPU
# instead of 16. The kernel's page cache keeps the file's pages for all of them.
CACHE_PAGES = 512


class UnsafeCacheRow(Exception):
    """The cache holds a row that is not JSON (a pickle); refusing to load it."""


class CacheCorrupt(Exception):
    """The cache database is damaged (not a database, malformed, or holding unsafe rows)."""


class CacheUnavailable(Exception):
    """The cache database cannot be opened now (disk full, permissions, held locked); it is not damaged."""


def exact_text(value: Any) -> str:
    """A Decimal as its exact text (money in a result stays to the cent); anything else is refused."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} values cannot be stored as JSON")


def encode(value: Any) -> str:
    """JSON text of ``value`` (orjson in C; the stdlib for what orjson refuses, e.g. ints past 64 bits)."""
    try:
        return orjson.dumps(value, default=exact_text, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=exact_text)


class JSONOnlyDisk(diskcache.Disk):
    """Serialises values as JSON text and refuses pickled rows, so a planted row cannot run code.

    diskcache <= 5.6.3 unpickles any row it reads (CVE-2025-69872). Integers stay native so
    ``Cache.incr`` keeps working; everything else is JSON.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys must be str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeCacheRow("a cache key is pickled")
        return key

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if read:
            raise TypeError("file values are not stored in the task cache")
        if type(value) is int:
            return super().store(value, False, key=key)
        return super().store(encode(value), False, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_RAW:
            if type(value) is int:
                return value
            if type(value) is str:
                return orjson.loads(value)
        elif mode == diskcache.core.MODE_TEXT:
            return orjson.loads(super().fetch(mode, filename, value, False))
        raise UnsafeCacheRow(f"refusing to load a cache row of mode {mode} (only JSON is accepted)")


def open_cache(directory: Path, busy_seconds: float = 10.0) -> diskcache.Cache:
    """Open the cache directory (created if missing).

    CacheCorrupt if its database is unusable; CacheUnavailable if it cannot be opened now (disk
    full, no permission, locked past ``busy_seconds``), which is never a reason to set it aside.
    The SQLite busy timeout is 0: the store waits for the write lock itself, with a finer
    back-off. Opening writes diskcache's settings, so workers that start together retry here
    rather than fail to boot.
    """
    deadline = time.monotonic() + busy_seconds
    delay = 1e-3
    while True:
        try:
            cache = diskcache.Cache(
                str(directory),
                timeout=0,
                disk=JSONOnlyDisk,
                eviction_policy="none",
                cull_limit=0,
                statistics=False,
                tag_index=False,
                sqlite_wal_autocheckpoint=WAL_AUTOCHECKPOINT_PAGES,
                sqlite_journal_size_limit=JOURNAL_LIMIT_BYTES,
                sqlite_mmap_size=MMAP_BYTES,
                sqlite_cache_size=CACHE_PAGES,
            )
            cache.get(K_META + "initialized")
            return cache
        except diskcache.Timeout as exc:
            error: Exception = exc
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise CacheUnavailable(f"{directory / CACHE_DB}: {exc}") from exc
            error = exc
        except OSError as exc:
            raise CacheUnavailable(f"{directory / CACHE_DB}: {exc.strerror or exc}") from exc
        except (sqlite3.DatabaseError, UnsafeCacheRow, json.JSONDecodeError) as exc:
            raise CacheCorrupt(f"{directory / CACHE_DB}: {exc}") from exc
        if time.monotonic() > deadline:
            raise CacheUnavailable(f"{directory / CACHE_DB}: still locked after {busy_seconds:g} s ({error})")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# One statement per write instead of diskcache's select-then-insert-or-update (three). A row that
# keeps its value in a file (over the disk's min_file_size) is left to diskcache, which removes
# the file; the WHERE makes the upsert skip it and the caller falls back.
_UPSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value) "
    "VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?) "
    "ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, access_time = excluded.access_time, "
    "expire_time = NULL, size = 0, mode = 1, value = excluded.value WHERE Cache.filename IS NULL"
)


def checkpoint(cache: diskcache.Cache) -> bool:
    """Copy the write-ahead log's committed pages into the database without waiting for or
    blocking any reader or writer (PASSIVE); True when none is left to copy."""
    busy, logged, copied = cache._con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return not busy and logged == copied


def put(cache: diskcache.Cache, key: str, value: Any) -> None:
    """Store ``value`` (JSON) under ``key``, inside the caller's transaction."""
    text = encode(value)
    if len(text) < cache.disk.min_file_size:
        now = time.time()
        if cache._sql(_UPSERT, (key, now, now, text)).rowcount == 1:
            return
    cache.set(key, value)


def remove(cache: diskcache.Cache, key: str) -> None:
    """Delete ``key`` if present, inside the caller's transaction (one statement for an inline row)."""
    if cache._sql("DELETE FROM Cache WHERE key = ? AND raw = 1 AND filename IS NULL", (key,)).rowcount == 0:
        cache.delete(key)


def key_range(cache: diskcache.Cache, prefix: str, *, before: str | None = None, after: str | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[tuple[str, Any]]:
    """(key, value) pairs whose key starts with ``prefix``, in key order.

    diskcache has no public range query; its Cache table keeps (key, raw) uniquely indexed, so
    this is O(log n + rows). Values are decoded by the cache's own (JSON-only) disk.
    """
    low = prefix + (after or "")
    high = prefix + (before or RANGE_END)
    order = "DESC" if newest_first else "ASC"
    rows = cache._sql(
        "SELECT key, mode, filename, value FROM Cache WHERE key > ? AND key < ? AND raw = 1 "
        f"ORDER BY key {order} LIMIT ?",
        (low, high, limit or -1),
    ).fetchall()
    disk = cache.disk
    return [(key, disk.fetch(mode, filename, value, False)) for key, mode, filename, value in rows]


def get_many(cache: diskcache.Cache, keys: list[str]) -> dict[str, Any]:
    """The values of ``keys`` that exist, in one query per 500 keys."""
    found: dict[str, Any] = {}
    disk = cache.disk
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        marks = ",".join("?" * len(chunk))
        rows = cache._sql(f"SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({marks})",
                          chunk).fetchall()
        found.update((key, disk.fetch(mode, filename, value, False)) for key, mode, filename, value in rows)
    return found


def delete_many(cache: diskcache.Cache, keys: list[str]) -> list[str]:
    """Delete ``keys`` (inside a transaction); returns the value files to remove after commit.

    One DELETE per 500 keys instead of diskcache's select-then-delete per key: cleanup of 100k
    tasks removes half a million keys.
    """
    files: list[str] = []
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        marks = ",".join("?" * len(chunk))
        files += [name for (name,) in cache._sql(
            f"SELECT filename FROM Cache WHERE raw = 1 AND filename IS NOT NULL AND key IN ({marks})", chunk)]
        cache._sql(f"DELETE FROM Cache WHERE raw = 1 AND key IN ({marks})", chunk)
    return files


def key_count(cache: diskcache.Cache, prefix: str) -> int:
    (count,) = cache._sql(
        "SELECT COUNT(*) FROM Cache WHERE key > ? AND key < ? AND raw = 1", (prefix, prefix + RANGE_END)
    ).fetchone()
    return count




NOT_INLINE = object()


def get_raw(cache: diskcache.Cache, key: str) -> Any:
    """The JSON text stored under ``key``, not decoded (one statement): None if there is no such
    row, NOT_INLINE if its value lives in a file (read it the usual way then)."""
    row = cache._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1 "
                     "AND (expire_time IS NULL OR expire_time > ?)", (key, time.time())).fetchone()
    if row is None:
        return None
    mode, filename, value = row
    return value if mode == diskcache.core.MODE_RAW and filename is None and type(value) is str else NOT_INLINE


@contextlib.contextmanager
def savepoint(cache: diskcache.Cache) -> Iterator[None]:
    """Inside the caller's transaction: undo only what the block wrote if it raises."""
    cache._sql("SAVEPOINT one_of_many")
    try:
        yield
    except BaseException:
        cache._sql("ROLLBACK TO one_of_many")
        cache._sql("RELEASE one_of_many")
        raise
    cache._sql("RELEASE one_of_many")
