"""The service's settings: read once from ``ETL_*`` variables (and ``.env``), validated loudly."""

from __future__ import annotations

import ipaddress
import logging
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from etl import settings as etl_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "admin")
# Long-polls (GET /status?wait=60) must not hold up shutdown: after this many seconds open
# connections are closed, so the lifespan shutdown can stop the running steps in time.
CONNECTION_DRAIN_SECONDS = 5


class SettingsError(Exception):
    """A setting has a value the service cannot run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ETL_",
        env_file=PROJECT_ROOT / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(4, ge=1, le=64)
    worker_class: Literal["uvicorn", "asgi"] = "uvicorn"
    storage_dir: Path = Path("task_storage")
    # Upper bounds keep every derived time finite (a 1e308 interval overflowed the scheduler).
    task_ttl_hours: float = Field(24.0, gt=0, le=24 * 3660)
    max_concurrent_tasks: int = Field(25, ge=1)
    max_queued_tasks: int = Field(1000, ge=0)
    cleanup_interval_seconds: float = Field(300.0, gt=0, le=366 * 86400)
    task_timeout_seconds: float = Field(21600.0, gt=0, le=366 * 86400)
    stop_grace_seconds: float = Field(10.0, gt=0)
    graceful_timeout_seconds: float = Field(30.0, ge=10)
    heartbeat_interval_seconds: float = Field(1.0, gt=0, le=10)
    worker_lost_after_seconds: float = Field(3.0, gt=0)
    cache_timeout_seconds: float = Field(10.0, gt=0)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    min_free_disk_mb: float = Field(100.0, ge=0)
    input_dir: Path = Path("etl/samples")
    output_dir: Path | None = None
    work_dir: Path | None = None
    api_keys: str = ""
    api_keys_file: Path | None = None
    diagnostic_steps: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    task_logs_max_mb: float = Field(1024.0, gt=0)
    cors_origins: str = ""
    rate_limit_per_minute: float = Field(0.0, ge=0)
    session_hours: float = Field(8.0, gt=0, le=24 * 30)  # dashboard login lifetime
    pipelines_dir: Path = Path("etl/pipelines")
    step_policies_file: Path | None = Path("etl/step_policies.json")
    # A schedule occurrence found later than this (the service was down) follows its missed-run policy.
    schedule_missed_after_seconds: float = Field(60.0, gt=0)

    # --- scale-out: steps on Celery worker hosts, shared state in Redis (README "Scale out") ---
    backend: Literal["local", "celery"] = "local"
    redis_url: str = ""
    lease_seconds: float = Field(3.0, ge=0.5, le=300)
    worker_concurrency: int = Field(4, ge=1, le=256)
    broker_visibility_timeout_seconds: float = Field(3600.0, ge=1, le=366 * 86400)

    # --- HTTP trust boundary: who may call, from where, and what is recorded about them ---
    anonymous_role: Literal["viewer", "operator", "admin"] = "operator"
    allowed_hosts: str = ""
    trusted_proxies: str = ""
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    audit_log_max_mb: float = Field(10.0, gt=0)
    audit_log_backups: int = Field(5, ge=1, le=100)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for entry in _split(value):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://host:port/db, rediss:// or unix:// URL")
        return value

    @field_validator("backend", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("storage_dir", "input_dir", "output_dir", "work_dir", "api_keys_file", "pipelines_dir",
                     "step_policies_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Relative paths are relative to the project, not to wherever the server was started.
        if value is None:
            return None
        return value if value.is_absolute() else (PROJECT_ROOT / value).resolve()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", self.storage_dir / "outputs")
        if self.work_dir is None:
            object.__setattr__(self, "work_dir", self.storage_dir / "runs")
        if self.worker_lost_after_seconds < 2 * self.heartbeat_interval_seconds:
            raise ValueError("ETL_WORKER_LOST_AFTER_SECONDS must be at least twice ETL_HEARTBEAT_INTERVAL_SECONDS")
        if self.backend == "celery" and not self.redis_url:
            raise ValueError("ETL_BACKEND=celery needs ETL_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
        if not self.api_keys_configured and not is_loopback(self.host):
            raise ValueError(
                f"refusing to bind to {self.host} without API keys: set ETL_API_KEYS (or ETL_API_KEYS_FILE), "
                "or bind to 127.0.0.1"
            )
        if "*" in self.allowed_host_list and not self.api_keys_configured:
            raise ValueError(
                "ETL_ALLOWED_HOSTS=* lets any web page reach the service through DNS rebinding; "
                "it needs API keys (ETL_API_KEYS), or list the host names instead"
            )
        return self

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.lower().rstrip(".") for host in _split(self.allowed_hosts)]

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(entry, strict=False) for entry in _split(self.trusted_proxies)]

    @property
    def audit_log_max_bytes(self) -> int:
        return int(self.audit_log_max_mb * 1024 * 1024)

    @property
    def api_keys_configured(self) -> bool:
        return bool(self.api_keys.strip()) or self.api_keys_file is not None

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def task_ttl_seconds(self) -> float:
        return self.task_ttl_hours * 3600.0

    @property
    def cache_dir(self) -> Path:
        return self.storage_dir / "task_cache"


def _split(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings() -> Settings:
    """Read and validate the settings; raise SettingsError with one readable line per problem."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"ETL_{field.upper()}" if field else "settings"
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            shown = f" (got {value!r})" if field and not isinstance(value, dict) else ""
            problems.append(f"{name}: {message}{shown}")
        raise SettingsError("; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read on first use."""
    return load_settings()


def settings_or_exit() -> Settings:
    """For entry points: the settings (the service's and the steps'), or one clear line on stderr and exit 2."""
    try:
        settings = get_settings()
        etl_settings.get_settings()  # a typo in a step setting stops the start, not every task later
        return settings
    except (SettingsError, etl_settings.SettingsError) as exc:
        print(f"etl-task-api: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# Read by the command-line client (api.cli), not by the server; often set in the same shell.
CLIENT_VARIABLES = frozenset({"ETL_URL", "ETL_API_KEY"})


def unknown_variables() -> list[str]:
    """``ETL_*`` names in the environment or ``.env`` that no setting reads (typos, most likely)."""
    known = {f"ETL_{name.upper()}" for name in Settings.model_fields} | etl_settings.known_names() | CLIENT_VARIABLES
    return sorted(name for name in etl_settings.variable_names()
                  if name not in known and not etl_settings.is_dynamic_name(name))


def warn_unknown_variables() -> list[str]:
    """Log one warning naming the unknown ``ETL_*`` variables (for entry points, at start)."""
    names = unknown_variables()
    if names:
        logger.warning("ignoring unknown setting(s) %s: no ETL_* setting has that name (a typo?); "
                       "README 'Settings' lists them", ", ".join(names))
    present = etl_settings.variable_names()
    if "ETL_API_KEY" in present and not {"ETL_API_KEYS", "ETL_API_KEYS_FILE"} & present:
        logger.warning("ETL_API_KEY is the command-line client's key; the server reads ETL_API_KEYS "
                       "(or ETL_API_KEYS_FILE), and none is set")
    return names
