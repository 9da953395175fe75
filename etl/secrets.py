"""Secrets for steps: ``${secret:name}`` references, resolved only inside the step that uses them.

A reference is allowed only in a parameter declared to carry one (``SecretText``, or any type
annotated with ``SecretField()``: credentials, connection strings); anywhere else (expressions,
free text, paths, labels) it is refused when the task is submitted, so a secret can never be
compared, echoed or measured by the parameters that use it. Declared fields are resolved after
validation, on the validated model, and never validated again: a validation error cannot quote a
secret value.

A secret comes from the environment variable ``ETL_SECRET_<NAME>`` or from the encrypted file
``ETL_SECRETS_FILE`` (AES-256-GCM; the key, 32 bytes in base64, in ``ETL_SECRETS_KEY``). Every value
resolved in a task is registered for masking, so it is written as ``***`` in task files, logs,
results and error messages (also where it appears JSON- or repr-escaped).

    python -m etl.secrets new-key                 print a new key for ETL_SECRETS_KEY
    python -m etl.secrets set NAME                read the value from standard input
    python -m etl.secrets list | delete NAME
    python -m etl.secrets rotate                  re-encrypt with ETL_SECRETS_NEW_KEY
"""

from __future__ import annotations

import base64
import functools
import getpass
import json
import os
import re
import sys
import threading
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel

from etl import settings
from etl.errors import EtlError

REFERENCE = re.compile(r"\$\{secret:([A-Za-z0-9_.-]+)\}")
# Anything that looks like a reference, also misspelt ones, is refused outside declared fields.
LOOKS_LIKE_REFERENCE = re.compile(r"\$\{\s*secret\s*:", re.I)
SCHEMA_MARK = "x-secret"
MASK = "***"
_NONCE_BYTES = 12
_FORMAT = "etl-secrets-v1"

_lock = threading.Lock()
_known: set[str] = set()  # every secret value resolved in this process, for masking
_forms_longest_first: list[str] = []  # those values as they may appear in text, longest first


class SecretError(EtlError):
    """A secret could not be found or decrypted."""


@dataclass(frozen=True)
class SecretField:
    """Marks a parameter that may hold ``${secret:name}`` references; GET /steps shows it as ``x-secret``."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema[SCHEMA_MARK] = True
        return schema


SecretText = Annotated[str, SecretField()]

# A path into parameters: field names, with "*" for any list item or dict value.
FieldPath = tuple[str, ...]


def _annotation_paths(annotation: Any, seen: frozenset[type]) -> Iterator[FieldPath]:
    """Paths, relative to a value of this type, of the parts declared to carry secrets."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *metadata = typing.get_args(annotation)
        if any(isinstance(m, SecretField) for m in metadata):
            yield ()
            return
        yield from _annotation_paths(base, seen)
    elif origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _annotation_paths(arg, seen)
    elif origin in (list, tuple, set, frozenset):
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                yield from (("*", *p) for p in _annotation_paths(arg, seen))
    elif origin is dict:
        args = typing.get_args(annotation)
        if len(args) == 2:
            yield from (("*", *p) for p in _annotation_paths(args[1], seen))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
        yield from secret_paths(annotation, seen | {annotation})


@functools.lru_cache(maxsize=512)
def secret_paths(model: type[BaseModel], seen: frozenset[type] = frozenset()) -> tuple[FieldPath, ...]:
    """Every path in ``model``'s parameters declared to carry secret references."""
    paths: list[FieldPath] = []
    for name, info in model.model_fields.items():
        if any(isinstance(m, SecretField) for m in info.metadata):
            paths.append((name,))
            continue
        paths.extend((name, *p) for p in _annotation_paths(info.annotation, seen | {model}))
    return tuple(paths)


def _declared(path: FieldPath, declared: Sequence[FieldPath]) -> bool:
    return any(len(d) <= len(path) and all(a in ("*", b) for a, b in zip(d, path)) for d in declared)


def misplaced_references(value: Any, declared: Sequence[FieldPath], prefix: FieldPath = ()) -> list[FieldPath]:
    """Paths of strings in ``value`` (keys included) holding a reference outside the declared paths."""
    found: list[FieldPath] = []
    if isinstance(value, str):
        if LOOKS_LIKE_REFERENCE.search(value) and not _declared(prefix, declared):
            found.append(prefix)
    elif isinstance(value, dict):
        for key, item in value.items():
            path = (*prefix, str(key))
            if isinstance(key, str) and LOOKS_LIKE_REFERENCE.search(key):
                found.append(path)
            found.extend(misplaced_references(item, declared, path))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.extend(misplaced_references(item, declared, (*prefix, str(index))))
    return found


def _resolve_at(value: Any, path: FieldPath) -> Any:
    if not path:
        return resolve(value)
    head, rest = path[0], path[1:]
    if isinstance(value, BaseModel):
        if head not in type(value).model_fields:
            return value
        # model_copy does not validate: the resolved value never meets a validator (or its error message).
        return value.model_copy(update={head: _resolve_at(getattr(value, head), rest)})
    if isinstance(value, dict):
        keys = value if head == "*" else [k for k in value if k == head]
        return {k: (_resolve_at(v, rest) if k in keys else v) for k, v in value.items()}
    if isinstance(value, list) and head == "*":
        return [_resolve_at(v, rest) for v in value]
    return value


def resolve_declared(params: BaseModel) -> BaseModel:
    """A copy of validated ``params`` with the references in its declared secret fields resolved."""
    for path in secret_paths(type(params)):
        params = _resolve_at(params, path)
    return params


def _key(variable: str = "ETL_SECRETS_KEY") -> bytes:
    if variable == "ETL_SECRETS_KEY":
        configured = settings.get_settings().secrets_key
        text = configured.get_secret_value() if configured else ""
    else:  # ETL_SECRETS_NEW_KEY: read by `rotate` only
        text = os.environ.get(variable, "")
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SecretError(f"{variable} must hold a 32-byte key in base64 (python -m etl.secrets new-key)")
    return key


def _file() -> Path | None:
    return settings.get_settings().secrets_file


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
    """Register ``value`` for masking (a resolved secret)."""
    global _forms_longest_first
    if value:
        with _lock:
            if value not in _known:
                _known.add(value)
                forms = {f for secret in _known for f in _forms(secret)}
                _forms_longest_first = sorted(forms, key=len, reverse=True)


def resolve(value: Any) -> Any:
    """``value`` with every ``${secret:name}`` replaced by the secret (strings, lists, dicts)."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: lookup(m.group(1)), value)
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    return value


def _forms(secret: str) -> set[str]:
    """The secret as it may appear in text: as is, repr-escaped (tracebacks, errors), and both JSON-escaped."""
    forms = set()
    for text in (secret, repr(secret)[1:-1]):
        forms |= {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    return {form for form in forms if form}


def mask_text(text: str) -> str:
    """``text`` with every secret value this process resolved replaced by ``***``."""
    for form in _forms_longest_first:
        if form in text:
            text = text.replace(form, MASK)
    return text


def mask_values(value: Any) -> Any:
    """``value`` with every resolved secret masked in its strings (dict keys too); nothing else changes."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list):
        return [mask_values(v) for v in value]
    if isinstance(value, dict):
        return {(mask_text(k) if isinstance(k, str) else k): mask_values(v) for k, v in value.items()}
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
