"""API keys and roles: viewer reads, operator also runs and stops, admin also cleans up."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from api.errors import Forbidden, Unauthorized
from api.settings import ROLES, Settings, SettingsError

RANK = {role: rank for rank, role in enumerate(ROLES)}
HASH_PREFIX = "sha256:"


@dataclass(frozen=True)
class Identity:
    role: str
    name: str

    def as_dict(self, client: str | None = None) -> dict[str, str | None]:
        return {"role": self.role, "name": self.name, "client": client}


ANONYMOUS_NAME = "anonymous (no API keys configured; loopback only)"


@dataclass(frozen=True)
class _Key:
    identity: Identity
    digest: bytes


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _parse(entry: str, where: str) -> _Key:
    parts = entry.strip().split(":", 2)
    if len(parts) < 2 or parts[0] not in RANK or not parts[-1]:
        raise SettingsError(f"{where}: expected 'role:key' or 'role:name:key' with role in {', '.join(ROLES)}")
    role = parts[0]
    if len(parts) == 3 and parts[1] != "sha256":
        name, secret = parts[1], parts[2]
    else:
        name, secret = None, ":".join(parts[1:])
    if secret.startswith(HASH_PREFIX):
        try:
            digest = bytes.fromhex(secret[len(HASH_PREFIX):])
        except ValueError:
            raise SettingsError(f"{where}: the sha256 hash is not hexadecimal") from None
        if len(digest) != 32:
            raise SettingsError(f"{where}: a sha256 hash has 64 hexadecimal digits")
    else:
        digest = _digest(secret)
    return _Key(Identity(role, name or f"{role}-{digest.hex()[:8]}"), digest)


class KeyRing:
    """The configured keys; compares in constant time and never keeps a key in clear."""

    def __init__(self, keys: list[_Key], anonymous_role: str = "operator") -> None:
        self._keys = keys
        # Without keys every loopback caller is this identity; admin only when ETL_ANONYMOUS_ROLE says so.
        self.anonymous = Identity(role=anonymous_role, name=ANONYMOUS_NAME)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys = [
            _parse(entry, f"ETL_API_KEYS entry {number}")
            for number, entry in enumerate(settings.api_keys.split(","), 1)
            if entry.strip()
        ]
        if settings.api_keys_file is not None:
            keys += cls._read_file(settings.api_keys_file)
        return cls(keys, settings.anonymous_role)

    @staticmethod
    def _read_file(path: Path) -> list[_Key]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(f"ETL_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
        return [
            _parse(line, f"ETL_API_KEYS_FILE line {number}")
            for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def knows(self, identity: Identity) -> bool:
        """Whether a configured key still has this name and role (a dashboard session's check)."""
        return any(key.identity == identity for key in self._keys)

    def identify(self, presented: str | None) -> Identity:
        if not self.enabled:
            return self.anonymous
        if not presented:
            raise Unauthorized()
        digest = _digest(presented)
        match = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                match = key.identity
        if match is None:
            raise Unauthorized("The API key is not valid.")
        return match


def require(identity: Identity, role: str) -> None:
    if RANK[identity.role] >= RANK[role]:
        return
    if identity.name == ANONYMOUS_NAME:
        raise Forbidden(f"This needs the {role} role; without API keys callers have the {identity.role} role "
                        f"(ETL_ANONYMOUS_ROLE={role} grants it to every local caller, or configure ETL_API_KEYS).")
    raise Forbidden(f"This needs the {role} role; the key '{identity.name}' has the {identity.role} role.")
