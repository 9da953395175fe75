"""The secret that signs dashboard session cookies, shared by every worker through the store."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from api.store.keys import K_SESSION_SECRET

if TYPE_CHECKING:
    from api.store.local import TaskStore


class SigningKey:
    """Mixed into TaskStore."""

    def session_secret(self: TaskStore) -> bytes:
        """Created once (by whichever worker asks first); a lost cache only logs browsers out."""
        value = self._get(K_SESSION_SECRET)
        if value is None:
            with self._transaction():
                value = self.cache.get(K_SESSION_SECRET)
                if value is None:
                    value = secrets.token_hex(32)
                    self.cache.set(K_SESSION_SECRET, value)
        return bytes.fromhex(value)
