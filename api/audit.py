"""The append-only audit log: who ran, stopped and cleaned up what (task_storage/audit.log, JSON lines)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from api.auth import Identity
from api.task import now_iso
from etl import secrets

logger = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, action: str, identity: Identity | None, client: str | None, **details: Any) -> None:
        """Append one line (role and key name, never the key); a failure is logged, never raised."""
        entry = {"at": now_iso(), "action": action, "role": identity.role if identity else None,
                 "key_name": identity.name if identity else None, "client": client, **details}
        line = secrets.mask_text(json.dumps(entry, ensure_ascii=False)) + "\n"
        try:
            # O_APPEND: each line lands whole at the end, whichever worker writes it.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, line.encode("utf-8"))
            finally:
                os.close(descriptor)
        except OSError as exc:
            logger.error("could not write the audit log %s: %s", self.path, exc)
