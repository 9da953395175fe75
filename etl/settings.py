"""The ETL steps' settings: ``ETL_*`` variables (and ``.env``) read once and validated.

The server loads them at start (a bad value stops it with one clear line, as its own settings
do); ``python -m etl`` loads them on first use. Steps read ``get_settings()``, never
``os.environ``. The settings are read again only if the ``ETL_*`` environment changes (tests do
that; a running server does not). ``ETL_SECRET_<NAME>`` values are not settings: a secret is read
by name when a task uses it (``etl.secrets``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import urllib.parse
from pathlib import Path

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from etl.errors import EtlError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = PROJECT_ROOT / ".env"
PORTAL_URL = re.compile(r"^ETL_PORTAL_([A-Z0-9]+)_URL$")
SECRET_VARIABLE = re.compile(r"^ETL_SECRET_[A-Z0-9_]+$")
# Read by the command-line tools only (python -m etl.secrets rotate), never by a running step.
TOOL_VARIABLES = frozenset({"ETL_SECRETS_NEW_KEY"})


class SettingsError(EtlError):
    """An ETL setting has a value the steps cannot run with."""


class EtlSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ETL_", env_file=ENV_FILE, env_file_encoding="utf-8",
                                      extra="ignore", frozen=True)

    storage_dir: Path = Path("task_storage")
    input_dir: Path = Path("etl/samples")
    output_dir: Path | None = None
    work_dir: Path | None = None
    chromedriver_path: str = ""
    chromium_path: str = ""
    browser_page_load_timeout: float = Field(60.0, gt=0, description="Seconds.")
    browser_wait_timeout: float = Field(30.0, gt=0, description="Seconds.")
    browser_download_timeout: float = Field(120.0, gt=0, description="Seconds.")
    browser_args: str = ""
    trustee_commands: str = ""
    trustee_cwd: Path | None = None
    recipes_dir: Path | None = None
    secrets_file: Path | None = None
    secrets_key: SecretStr | None = None
    # ETL_PORTAL_<PLATFORM>_URL, by lower-case platform (filled by load_settings).
    portal_urls: dict[str, str] = Field(default_factory=dict)

    @field_validator("storage_dir", "input_dir", "output_dir", "work_dir", "trustee_cwd", "recipes_dir",
                     "secrets_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Relative paths are relative to the project, not to wherever the process was started.
        if value is None or str(value) == "":
            return None
        return value if value.is_absolute() else (PROJECT_ROOT / value).resolve()

    @field_validator("secrets_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            key = base64.b64decode(value.get_secret_value(), validate=True)
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != 32:
            raise ValueError("must hold a 32-byte key in base64 (python -m etl.secrets new-key)")
        return value

    @field_validator("trustee_commands")
    @classmethod
    def _commands(cls, value: str) -> str:
        if value:
            try:
                commands = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not JSON: {exc.msg}") from None
            if not isinstance(commands, dict) or not all(
                    isinstance(v, list) and v and all(isinstance(a, str) for a in v) for v in commands.values()):
                raise ValueError('must map names to command lines, e.g. {"trustee": ["python", "t.py"]}')
        return value

    @field_validator("portal_urls")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for platform, url in value.items():
            if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
                raise ValueError(f"ETL_PORTAL_{platform.upper()}_URL must be an http(s) address")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> EtlSettings:
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", self.storage_dir / "outputs")
        if self.work_dir is None:
            object.__setattr__(self, "work_dir", self.storage_dir / "runs")
        return self

    @property
    def trustee_command_map(self) -> dict[str, list[str]] | None:
        return json.loads(self.trustee_commands) if self.trustee_commands else None

    @property
    def browser_arg_list(self) -> list[str]:
        return self.browser_args.split()


def _env_file_values() -> dict[str, str]:
    if not ENV_FILE.is_file():
        return {}
    return {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None}


def variable_names() -> set[str]:
    """Every ``ETL_*`` name set in the environment or in ``.env``."""
    return {name for name in (*os.environ, *_env_file_values()) if name.startswith("ETL_")}


def is_dynamic_name(name: str) -> bool:
    """Names made of a pattern (secrets, portal addresses) or read by the command-line tools."""
    return bool(SECRET_VARIABLE.match(name) or PORTAL_URL.match(name)) or name in TOOL_VARIABLES


def known_names() -> set[str]:
    return {f"ETL_{name.upper()}" for name in EtlSettings.model_fields if name != "portal_urls"}


def load_settings() -> EtlSettings:
    """Read and validate the settings; SettingsError with one readable line per problem."""
    urls = {**_env_file_values(), **os.environ}
    portal_urls = {m.group(1).lower(): value for name, value in urls.items() if (m := PORTAL_URL.match(name)) and value}
    try:
        return EtlSettings(portal_urls=portal_urls)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if field.startswith("portal_urls"):
                problems.append(message)
                continue
            shown = "" if field == "secrets_key" or isinstance(error.get("input"), dict) else f" (got {error.get('input')!r})"
            problems.append(f"ETL_{field.upper()}: {message}{shown}")
        raise SettingsError("; ".join(problems)) from None


_lock = threading.Lock()
_cached: tuple[tuple[tuple[str, str], ...], EtlSettings] | None = None


def _fingerprint() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("ETL_") and not SECRET_VARIABLE.match(k)))


def get_settings() -> EtlSettings:
    """The settings of this process (read again only if the ETL_* environment changed)."""
    global _cached
    fingerprint = _fingerprint()
    with _lock:
        if _cached is not None and _cached[0] == fingerprint:
            return _cached[1]
    settings = load_settings()
    with _lock:
        _cached = (fingerprint, settings)
    return settings
