"""Secrets for steps: ``${secret:name}`` references, resolved only inside the step that uses them.

A secret comes from the environment variable ``ETL_SECRET_<NAME>`` or from the encrypted file
``ETL_SECRETS_FILE`` (AES-256-GCM; the key, 32 bytes in base64, in ``ETL_SECRETS_KEY``). Every value
resolved in a task is registered for masking, so it is written as ``***`` in task files, logs,
results and error messages.

    python -m etl.secrets new-key                 print a new key for ETL_SECRETS_KEY
    python -m etl.secrets set NAME                read the value from standard input
    python -m etl.secrets list | delete NAME
    python -m etl.secrets rotate                  re-encrypt with ETL_SECRETS_NEW_KEY
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from etl.errors import EtlError

REFERENCE = re.compile(r"\$\{secret:([A-Za-z0-9_.-]+)\}")
MASK = "***"
_NONCE_BYTES = 12
_FORMAT = "etl-secrets-v1"

_lock = threading.Lock()
_known: set[str] = set()  # every secret value resolved in this process, for masking


class SecretError(EtlError):
    """A secret could not be found or decrypted."""


def _key(variable: str = "ETL_SECRETS_KEY") -> bytes:
    text = os.environ.get(variable, "")
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SecretError(f"{variable} must hold a 32-byte key in base64 (python -m etl.secrets new-key)")
    return key


def _file() -> Path | None:
    value = os.environ.get("ETL_SECRETS_FILE")
    return Path(value) if value else None


def _load(path: Path, key: bytes) -> dict[str, str]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not path.exists():
        return {}
    try:
        envelope = json.loads(path.read_text(encoding="utf-8"))
        blob = base64.b64decode(envelope["data"])
        plain = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _FORMAT.encode())
        return json.loads(plain)
    except InvalidTag:
        raise SecretError(f"{path} cannot be decrypted with this ETL_SECRETS_KEY (wrong key or altered file)") from None
    except (ValueError, KeyError) as exc:
        raise SecretError(f"{path} is not a secrets file: {exc}") from None


def _save(path: Path, key: bytes, secrets: dict[str, str]) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE_BYTES)
    blob = nonce + AESGCM(key).encrypt(nonce, json.dumps(secrets).encode(), _FORMAT.encode())
    tmp = path.with_name(f".{path.name}.tmp")
    # Created 0600 from the start (POSIX), synced, then swapped in: never readable by others, never half written.
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(json.dumps({"format": _FORMAT, "data": base64.b64encode(blob).decode()}).encode("utf-8"))
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def lookup(name: str) -> str:
    """The secret ``name`` (environment first, then the encrypted file); registered for masking."""
    value = os.environ.get(f"ETL_SECRET_{name.upper().replace('-', '_').replace('.', '_')}")
    if value is None:
        path = _file()
        if path is None:
            raise SecretError(f"secret {name!r} is not set (ETL_SECRET_{name.upper()} or ETL_SECRETS_FILE)")
        value = _load(path, _key()).get(name)
        if value is None:
            raise SecretError(f"secret {name!r} is not in {path}")
    remember(value)
    return value


def remember(value: str) -> None:
    if value:
        with _lock:
            _known.add(value)


def resolve(value: Any) -> Any:
    """``value`` with every ``${secret:name}`` replaced by the secret (strings, lists, dicts)."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: lookup(m.group(1)), value)
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    return value


def mask_text(text: str) -> str:
    """``text`` with every secret value this process resolved replaced by ``***``."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_values(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list):
        return [mask_values(v) for v in value]
    if isinstance(value, dict):
        return {k: mask_values(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = args[0]
    try:
        if command == "new-key":
            print(base64.b64encode(os.urandom(32)).decode())
            return 0
        path = _file()
        if path is None:
            raise SecretError("set ETL_SECRETS_FILE to the secrets file's path")
        key = _key()
        secrets = _load(path, key)
        if command == "list":
            print("\n".join(sorted(secrets)))
        elif command == "set" and len(args) == 2:
            value = getpass.getpass(f"value for {args[1]}: ") if sys.stdin.isatty() else sys.stdin.read().rstrip("\n")
            secrets[args[1]] = value
            _save(path, key, secrets)
            print(f"{args[1]} saved in {path}")
        elif command == "delete" and len(args) == 2:
            if secrets.pop(args[1], None) is None:
                raise SecretError(f"{args[1]} is not in {path}")
            _save(path, key, secrets)
        elif command == "rotate":
            _save(path, _key("ETL_SECRETS_NEW_KEY"), secrets)
            print(f"{path} re-encrypted; now set ETL_SECRETS_KEY to ETL_SECRETS_NEW_KEY's value")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except SecretError as exc:
        print(f"python -m etl.secrets: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
