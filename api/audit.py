"""The append-only audit log: who ran, stopped and cleaned up what (task_storage/audit.log, JSON lines).

A line says who did what, not with which data: a detail larger than ``MAX_DETAIL_CHARS`` (task
parameters can be megabytes) is kept as its size, a hash and its first keys. The log is rotated
by size (``audit.log.1`` … ``audit.log.N``, the oldest dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from api.auth import Identity
from api.task import now_iso
from etl import secrets

logger = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 2000
SUMMARY_KEYS = 20


def summarize(value: Any) -> Any:
    """``value`` itself when it is small; else its size, sha256 and top-level keys, so a line stays short."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) <= MAX_DETAIL_CHARS:
        return value
    summary: dict[str, Any] = {"truncated": True, "bytes": len(text.encode("utf-8", "backslashreplace")),
                               "sha256": hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()}
    if isinstance(value, dict):
        keys = [str(key)[:100] for key in value]
        summary["keys"] = keys[:SUMMARY_KEYS]
        summary["key_count"] = len(keys)
    return summary


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def record(self, action: str, identity: Identity | None, client: str | None, **details: Any) -> None:
        """Append one line (role and key name, never the key); a failure is logged, never raised."""
        entry = {"at": now_iso(), "action": action, "role": identity.role if identity else None,
                 "key_name": identity.name if identity else None, "client": client,
                 **{name: summarize(value) for name, value in details.items()}}
        line = secrets.mask_text(json.dumps(entry, ensure_ascii=False)) + "\n"
        data = line.encode("utf-8", "backslashreplace")
        try:
            # O_APPEND: each line lands whole at the end, whichever worker writes it.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                full = os.fstat(descriptor).st_size + len(data) > self.max_bytes
                if not full:
                    os.write(descriptor, data)
            finally:
                os.close(descriptor)
            if full:
                self._rotate(len(data))
                descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(descriptor, data)
                finally:
                    os.close(descriptor)
        except OSError as exc:
            logger.error("could not write the audit log %s: %s", self.path, exc)

    def _rotate(self, incoming: int) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.N (dropped); safe when several workers race."""
        try:
            # Another worker may have rotated since this one looked: then there is room again.
            size = self.path.stat().st_size
            if size == 0 or size + incoming <= self.max_bytes:
                return
        except FileNotFoundError:
            return
        try:
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        except OSError as exc:
            # On Windows a file another worker has open cannot be renamed; the next line tries again.
            logger.warning("could not rotate the audit log %s: %s", self.path, exc)
