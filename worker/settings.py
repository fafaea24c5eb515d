"""Settings: a TOML file (`--config PATH` or COST_WORKER_CONFIG) plus COST_WORKER_* environment variables.

Environment wins over the file, the file over the defaults. Every setting is listed, with its default
and a one-line explanation, in config.example.toml; `load_settings` turns any invalid value into one
`SettingsError` line that names the setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "COST_WORKER_"
CONFIG_ENV = "COST_WORKER_CONFIG"
Tier = Literal["free", "pro", "ultimate"]
TIERS: tuple[Tier, ...] = ("free", "pro", "ultimate")


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line naming the setting."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cost-worker"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""  # empty: sqlite:///<data_dir>/cost-worker.db
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    previous_master_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    previous_master_key_files: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    api_base_url: str = "https://api.anthropic.com"
    requests_per_minute: float = Field(default=1.0, gt=0, le=6000)
    burst: int = Field(default=1, ge=1, le=1000)
    http_timeout: float = Field(default=30.0, gt=0, le=600)
    max_attempts: int = Field(default=8, ge=1, le=100)
    max_retry_seconds: float = Field(default=1800.0, gt=0)
    page_limit: int = Field(default=31, ge=1, le=31)
    daily_sync_time: time = time(6, 0)
    resync_days: int = Field(default=3, ge=1, le=31)
    backfill_days_free: int = Field(default=30, ge=1, le=3650)
    backfill_days_pro: int = Field(default=365, ge=1, le=3650)
    backfill_days_ultimate: int = Field(default=365, ge=1, le=3650)
    poll_seconds: float = Field(default=5.0, gt=0, le=10)
    lease_seconds: float = Field(default=300.0, ge=10)
    max_concurrent_syncs: int = Field(default=1000, ge=1)
    http_port: int = Field(default=8080, ge=0, le=65535)  # /healthz, /readyz, /metrics of `run`; 0 = off
    # All interfaces by default: probes and scrapes reach a container on its pod/bridge address.
    http_host: str = "0.0.0.0"
    log_format: Literal["auto", "text", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("http_host")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z.\-]{1,253}|[0-9A-Fa-f:.]{2,45}", value):
            raise ValueError("expected an IP address or a host name, e.g. 0.0.0.0, :: or 127.0.0.1")
        return value

    @field_validator("previous_master_keys", "previous_master_key_files", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Environment variables carry lists as comma-separated text; TOML carries real arrays.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("daily_sync_time", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = re.fullmatch(r"(\d{1,2}):(\d{2})(?:Z| ?UTC)?", value.strip())
            if not match or int(match[1]) > 23 or int(match[2]) > 59:
                raise ValueError("expected HH:MM in UTC, e.g. 06:00")
            return time(int(match[1]), int(match[2]))
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _check_base(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http(s) URL such as https://api.anthropic.com")
        return value.rstrip("/")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'cost-worker.db'}"

    @property
    def default_master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    def backfill_days(self, tier: Tier) -> int:
        return {"free": self.backfill_days_free, "pro": self.backfill_days_pro,
                "ultimate": self.backfill_days_ultimate}[tier]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the TOML file's values: environment first so it wins over the file.
        return (env_settings, init_settings)


# Sections of the TOML file that belong to other features and are read by them, not by Settings.
EXTRA_SECTIONS = ("models",)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path}: {exc}") from None
    return data


def load_settings(config_path: Path | str | None = None) -> Settings:
    """Build Settings from the config file (if any) and the environment, or raise one clear SettingsError."""
    path = Path(config_path) if config_path else (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    file_values = read_config_file(path) if path else {}
    file_values = {k: v for k, v in file_values.items() if k not in EXTRA_SECTIONS}
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path)) from None


def config_section(config_path: Path | str | None, section: str) -> dict[str, Any]:
    """A table of the config file that is not a Settings field (e.g. the [models] alias table)."""
    path = Path(config_path) if config_path else (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if not path:
        return {}
    value = read_config_file(path).get(section, {})
    if not isinstance(value, dict):
        raise SettingsError(f"config file {path}: [{section}] must be a table")
    return value


def _describe(exc: ValidationError, path: Path | None) -> str:
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"]) or "settings"
    env_name = ENV_PREFIX + name.split(".")[0].upper()
    where = env_name if env_name in os.environ else (f"{name} in {path}" if path else env_name)
    msg = err["msg"].removeprefix("Value error, ")  # our validators' own words, without pydantic's prefix
    if err["type"] == "extra_forbidden":
        return f"invalid setting {where}: unknown setting (see config.example.toml for the valid names)"
    # pydantic echoes the input in some messages; secrets must never be echoed, so only the reason is used.
    return f"invalid setting {where}: {msg}"
