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
import threading
from pathlib import Path
from typing import Any

from api.auth import Identity
from api.task import now_iso
from etl import secrets

logger = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 2000
# On Windows a file another worker holds open cannot be renamed (rotated): open it per line there.
KEEP_OPEN = os.name == "posix"
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
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def record(self, action: str, identity: Identity | None, client: str | None, **details: Any) -> None:
        """Append one line (role and key name, never the key); a failure is logged, never raised."""
        entry = {"at": now_iso(), "action": action, "role": identity.role if identity else None,
                 "key_name": identity.name if identity else None, "client": client,
                 **{name: summarize(value) for name, value in details.items()}}
        line = secrets.mask_text(json.dumps(entry, ensure_ascii=False)) + "\n"
        data = line.encode("utf-8", "backslashreplace")
        with self._lock:  # threads of this worker share the descriptor
            try:
                descriptor, size = self._open_current()
                if size + len(data) > self.max_bytes:
                    self._close()
                    self._rotate(len(data))
                    descriptor, _ = self._open_current()
                # O_APPEND: each line lands whole at the end, whichever worker writes it.
                os.write(descriptor, data)
                if not KEEP_OPEN:
                    self._close()
            except OSError as exc:
                self._close()
                logger.error("could not write the audit log %s: %s", self.path, exc)

    def _open_current(self) -> tuple[int, int]:
        """A descriptor on the file now at ``path`` and its size. On POSIX the descriptor is kept
        while the path still names its file (another worker may have rotated it): one ``stat``
        per line instead of an open and a close."""
        if self._fd is not None:
            try:
                now = os.stat(self.path)
                if (now.st_dev, now.st_ino) == self._identity:
                    return self._fd, now.st_size
            except FileNotFoundError:
                pass
            self._close()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        found = os.fstat(descriptor)
        self._fd, self._identity = descriptor, (found.st_dev, found.st_ino)
        return descriptor, found.st_size

    def _close(self) -> None:
        if self._fd is not None:
            descriptor, self._fd = self._fd, None
            os.close(descriptor)

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
