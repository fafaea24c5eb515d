"""Settings: a TOML file (`--config PATH` or COST_WORKER_CONFIG) plus COST_WORKER_* environment variables.

Environment wins over the file, the file over the defaults. Every setting is listed, with its default
and a one-line explanation, in config.example.toml; `load_settings` turns any invalid value into one
`SettingsError` line that names the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

ENV_PREFIX = "COST_WORKER_"
CONFIG_ENV = "COST_WORKER_CONFIG"
Tier = Literal["free", "pro", "ultimate"]
TIERS: tuple[Tier, ...] = ("free", "pro", "ultimate")


#: The default analytics groupings: every dimension a report `--by` needs (5, the API's maximum), plus the
#: cost fan-out (cost_type with token_type, so web search and code execution cost are kept).
ANALYTICS_COST_GROUP_BY = ("model", "workspace_id", "api_key_id", "actor", "service_tier", "cost_type", "token_type")
ANALYTICS_USAGE_GROUP_BY = ("model", "workspace_id", "api_key_id", "actor", "service_tier")
#: group_by[] values the Analytics API documents (the SDK's `BetaAnalyticsCostGroupBy`); usage has all but
#: the cost fan-out (cost_type, token_type), which does not count toward the 5 dimensions.
ANALYTICS_GROUP_BY_VALUES = frozenset({
    "actor", "actor_type", "agent_id", "api_key_id", "claude_tag_category", "claude_tag_user_id", "context_window",
    "cost_type", "deployment_id", "environment_id", "inference_geo", "model", "organization_id", "product",
    "rbac_group_id", "service_tier", "session_id", "slack_channel_id", "speed", "token_type", "user_profile_id",
    "workspace_id",
})
ANALYTICS_FAN_OUT = frozenset({"cost_type", "token_type"})
ANALYTICS_MAX_DIMENSIONS = 5


def check_group_by(values: list[str], *, cost: bool) -> list[str]:
    """An Analytics API `group_by[]`, or ValueError saying what the API would refuse or what would drop cost."""
    allowed = ANALYTICS_GROUP_BY_VALUES if cost else ANALYTICS_GROUP_BY_VALUES - ANALYTICS_FAN_OUT
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown group_by value {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    if len(set(values)) != len(values):
        raise ValueError("a group_by value is given twice")
    if len([v for v in values if v not in ANALYTICS_FAN_OUT]) > ANALYTICS_MAX_DIMENSIONS:
        raise ValueError(f"at most {ANALYTICS_MAX_DIMENSIONS} dimensions (cost_type and token_type do not count)")
    if "model" not in values:
        raise ValueError("must include model (reports are per day and model)")
    if cost and "token_type" in values and "cost_type" not in values:
        # The docstring: token_type alone returns token rows only, dropping web search, code execution and
        # session usage cost; with cost_type too, those come as their own rows.
        raise ValueError("token_type without cost_type drops every non-token cost: add cost_type")
    return values


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line naming the setting."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cost-worker"


DEFAULT_WORKSPACE = "default"
"""How the config file names the organization's default workspace (stored as '')."""


class Budget(BaseModel):
    """One `[[budgets]]` table: a spend limit per UTC month or day, optionally narrowed to a scope."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    limit_usd: Decimal = Field(gt=0, lt=Decimal(10) ** 12)
    period: Literal["month", "day"] = "month"
    integration: int | str | None = None  # an integration id, or its label
    workspace: str | None = Field(default=None, min_length=1, max_length=100)  # "default" = the default one
    api_key: str | None = None
    actor: str | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    warn_at: Decimal = Field(default=Decimal("0.8"), gt=0, le=1)  # share of the limit that turns `warn`

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if value != value.strip() or not value.isprintable():
            raise ValueError("must be printable text without leading or trailing spaces")
        return value

    @field_validator("api_key", "actor")
    @classmethod
    def _an_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value) > 500 or value != value.strip() or not value.isprintable()):
            raise ValueError("must be an id (an actor may also be a user's email) of at most 500 printable characters")
        return value

    @model_validator(mode="after")
    def _analytics_workspace(self) -> Budget:
        # api_key and actor are read from the Analytics API's bill, which names the default workspace by its
        # real id (the legacy report leaves it blank, which "default" stands for).
        if self.workspace == DEFAULT_WORKSPACE and self.analytics:
            raise ValueError("with api_key or actor, name the default workspace by its id (the Analytics API's: "
                             "`cost-worker report --by workspace --source analytics`), not \"default\"")
        return self

    @property
    def analytics(self) -> bool:
        """Whether the budget's spend comes from the Analytics API's bill (it alone has keys and actors)."""
        return self.api_key is not None or self.actor is not None

    @property
    def scope(self) -> str:
        """The scope in words, e.g. `integration=1 model=claude-sonnet-4-6`, or `all`."""
        parts = [f"{k}={v}" for k, v in (("integration", self.integration), ("workspace", self.workspace),
                                          ("api_key", self.api_key), ("actor", self.actor), ("model", self.model))
                 if v is not None]
        return " ".join(parts) or "all"


class Notify(BaseModel):
    """One `[[notify]]` table: a webhook `run` posts state changes to. The URL is a secret (it carries the
    token of Slack-style webhooks): it is never logged, echoed in an error, or stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr
    format: Literal["slack", "json"] = "json"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or any(c.isspace() or not c.isprintable() for c in text)):
            raise ValueError("expected an http(s) URL such as https://hooks.slack.com/services/...")
        return value


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
    http_timeout: float = Field(default=30.0, gt=0, le=600)  # the whole request, body included
    # Cap on one answer's body (worker.api.client.MAX_RESPONSE_BYTES: far above any real page).
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=4 * 1024**3)
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
    # The dashboard and /api/v1/ of `run` (worker.web): off (404) until a token is set; at most one of the two.
    ui_token: SecretStr | None = None
    ui_token_file: Path | None = None
    # The Usage and Cost Analytics API (beta): its group_by[] sets, rows per page, days re-read daily.
    analytics_cost_group_by: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(ANALYTICS_COST_GROUP_BY))
    analytics_usage_group_by: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(ANALYTICS_USAGE_GROUP_BY))
    analytics_product_report: bool = True  # also read cost and usage by (model, product), for `report --by product`
    analytics_page_limit: int = Field(default=1000, ge=1, le=1000)
    analytics_resync_days: int = Field(default=3, ge=1, le=31)
    log_format: Literal["auto", "text", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Spend anomalies: how unusual (robust z-score) and how large (USD off the baseline) a day must be.
    anomaly_min_score: float = Field(default=3.5, ge=1, le=1000)
    anomaly_min_usd: Decimal = Field(default=Decimal("1"), ge=0, lt=Decimal(10) ** 12)
    budgets: list[Budget] = Field(default_factory=list)
    notify: list[Notify] = Field(default_factory=list)

    @field_validator("budgets")
    @classmethod
    def _unique_budget_names(cls, value: list[Budget], info: ValidationInfo) -> list[Budget]:
        seen: dict[str, int] = {}
        grouping = info.data.get("analytics_cost_group_by") or []
        for number, budget in enumerate(value, 1):
            if budget.name in seen:
                raise ValueError(f"budget {budget.name!r} (#{number}): the name is already used by #{seen[budget.name]}; "
                                 "budget names must be unique")
            seen[budget.name] = number
            # A key or actor budget reads the Analytics API's cost rows: they must be grouped by what it names.
            needed = [dim for dim, field in (("api_key_id", budget.api_key), ("actor", budget.actor),
                                             ("workspace_id", budget.workspace)) if field is not None]
            missing = [dim for dim in needed if budget.analytics and grouping and dim not in grouping]
            if missing:
                raise ValueError(f"budget {budget.name!r} (#{number}) needs {missing[0]} in "
                                 "analytics_cost_group_by (the Analytics API's cost rows it reads)")
        return value

    @field_validator("http_host")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z.\-]{1,253}|[0-9A-Fa-f:.]{2,45}", value):
            raise ValueError("expected an IP address or a host name, e.g. 0.0.0.0, :: or 127.0.0.1")
        return value

    @field_validator("analytics_cost_group_by", "analytics_usage_group_by", mode="before")
    @classmethod
    def _split_group_by(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("analytics_cost_group_by")
    @classmethod
    def _cost_group_by(cls, value: list[str]) -> list[str]:
        return check_group_by(value, cost=True)

    @field_validator("analytics_usage_group_by")
    @classmethod
    def _usage_group_by(cls, value: list[str]) -> list[str]:
        return check_group_by(value, cost=False)

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
    def sends_key_in_clear(self) -> bool:
        """True when `api_base_url` is plain http to a host other than this machine: the Admin key would
        cross the network unencrypted (http to loopback, e.g. `cost-worker simulate`, stays on the host)."""
        url = urlsplit(self.api_base_url)
        return url.scheme == "http" and not _is_loopback(url.hostname or "")

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


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


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
        raise SettingsError(_describe(exc, path, file_values)) from None
    except SourceError as exc:  # an environment value that should be JSON (COST_WORKER_BUDGETS, ...) is not
        field = re.search(r'field "(\w+)"', str(exc))
        name = ENV_PREFIX + (field[1].upper() if field else "...")
        raise SettingsError(f"invalid setting {name}: expected a JSON list of tables, e.g. "
                            '[{"name": "all", "limit_usd": 1000}]') from None


def config_section(config_path: Path | str | None, section: str) -> dict[str, Any]:
    """A table of the config file that is not a Settings field (e.g. the [models] alias table)."""
    path = Path(config_path) if config_path else (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if not path:
        return {}
    value = read_config_file(path).get(section, {})
    if not isinstance(value, dict):
        raise SettingsError(f"config file {path}: [{section}] must be a table")
    return value


def _describe(exc: ValidationError, path: Path | None, file_values: dict[str, Any] | None = None) -> str:
    err = exc.errors()[0]
    loc = err["loc"]
    name = ".".join(str(p) for p in loc) or "settings"
    env_name = ENV_PREFIX + name.split(".")[0].upper()
    where = env_name if env_name in os.environ else (f"{name} in {path}" if path else env_name)
    msg = err["msg"].removeprefix("Value error, ")  # our validators' own words, without pydantic's prefix
    if loc and loc[0] in ("budgets", "notify"):
        return _describe_table(err, msg, env_name, path, file_values or {})
    if err["type"] == "extra_forbidden":
        return f"invalid setting {where}: unknown setting (see config.example.toml for the valid names)"
    # pydantic echoes the input in some messages; secrets must never be echoed, so only the reason is used.
    return f"invalid setting {where}: {msg}"


def _describe_table(err: Any, msg: str, env_name: str, path: Path | None, file_values: dict[str, Any]) -> str:
    """A [[budgets]] or [[notify]] entry's error, naming the entry (its position, and a budget's name)."""
    section, rest = err["loc"][0], err["loc"][1:]
    source = env_name if env_name in os.environ else (str(path) if path else env_name)
    if not rest or not isinstance(rest[0], int):
        return f"invalid [[{section}]] in {source}: {msg}"
    index, key = rest[0], ".".join(str(p) for p in rest[1:])
    entry = f"[[{section}]] #{index + 1}"
    raw = file_values.get(section) if env_name not in os.environ else None
    if section == "budgets" and isinstance(raw, list) and index < len(raw) and isinstance(raw[index], dict):
        if isinstance(raw[index].get("name"), str):
            entry = f"budget {raw[index]['name']!r} ({entry})"
    if err["type"] == "extra_forbidden":
        fields = Budget.model_fields if section == "budgets" else Notify.model_fields
        return f"invalid {entry} in {source}: unknown key {key!r} (valid: {', '.join(fields)})"
    if err["type"] == "missing":
        return f"invalid {entry} in {source}: {key} is required"
    return f"invalid {entry} in {source}: {key + ': ' if key else ''}{msg}"
