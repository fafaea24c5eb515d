"""The schema, drawn once. Alembic migrations (alembic/versions) create it; this module describes it for queries.

Dimension columns that are part of a row's grain never hold NULL: an absent dimension is stored as
'' so the unique constraints hold on both SQLite and PostgreSQL (NULLs never collide in a unique
index). `worker.storage.rows` converts '' back to None at the edge. For workspace_id, '' is the
organization's default workspace (the API's null).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from worker.storage.types import ExactDecimal, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

integrations = Table(
    "integrations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("label", String(200), nullable=False),
    Column("tier", String(20), nullable=False),
    Column("organization_id", String(100), nullable=False),
    Column("organization_name", String(300), nullable=False),
    # AES-256-GCM: nonce || ciphertext || tag, bound to this row's id by the associated data.
    Column("key_ciphertext", LargeBinary, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("key_hint", String(64), nullable=False),
    Column("status", String(20), nullable=False),  # pending | backfilling | ok | error
    Column("last_success_at", UTCDateTime),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Backfill window fixed at connect time; checkpoints are the next day to fetch, per endpoint.
    Column("backfill_start", Date, nullable=False),
    Column("backfill_end", Date, nullable=False),
    Column("cost_checkpoint", Date, nullable=False),
    Column("usage_checkpoint", Date, nullable=False),
    Column("backfill_done", Boolean, nullable=False, default=False),
    # The daily slot (its UTC start time) last handled, so each 06:00 runs once per integration.
    Column("last_daily_slot", UTCDateTime),
    # Lease: the record of which process syncs the integration, since and until when (the claim itself is
    # a lock that dies with its process: worker.sync.claims). Without such a lock an expired lease may be
    # taken over.
    Column("lease_owner", String(100)),
    Column("lease_since", UTCDateTime),
    Column("lease_expires_at", UTCDateTime),
    # Backoff of a failing integration: consecutive failed runs, and when `run` may try again (None: not by
    # itself, e.g. a revoked key, until the next daily slot or a new key).
    Column("failed_attempts", Integer, nullable=False, server_default=text("0")),
    Column("retry_at", UTCDateTime),
    # Which bills it syncs: legacy (cost_report/usage_report), analytics (the Analytics API), or both.
    Column("source", String(10), nullable=False, server_default="legacy"),
    sqlite_autoincrement=True,
)

cost_rows = Table(
    "cost_rows",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    Column("workspace_id", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("cost_type", String(100), nullable=False),
    Column("token_type", String(200), nullable=False),
    Column("service_tier", String(50), nullable=False),
    Column("context_window", String(50), nullable=False),
    Column("inference_geo", String(50), nullable=False),
    Column("description", String(500), nullable=False),
    Column("extra", Text, nullable=False),  # canonical JSON of fields the API added that we don't model, '' if none
    Column("amount_usd", ExactDecimal, nullable=False),
    Column("currency", String(10), nullable=False),
    UniqueConstraint(
        "integration_id", "day", "workspace_id", "model", "cost_type", "token_type", "service_tier",
        "context_window", "inference_geo", "description", "extra", name="uq_cost_rows_grain",
    ),
)

usage_rows = Table(
    "usage_rows",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    Column("workspace_id", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("service_tier", String(50), nullable=False),
    Column("context_window", String(50), nullable=False),
    Column("api_key_id", String(100), nullable=False),
    Column("inference_geo", String(50), nullable=False),
    Column("extra_key", Text, nullable=False),  # canonical JSON of unknown non-numeric fields, '' if none
    Column("uncached_input_tokens", BigInteger, nullable=False),
    Column("cache_read_input_tokens", BigInteger, nullable=False),
    Column("cache_creation_5m_input_tokens", BigInteger, nullable=False),
    Column("cache_creation_1h_input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("web_search_requests", BigInteger, nullable=False),
    Column("extra_counts", Text, nullable=False),  # canonical JSON of unknown counters, '' if none
    UniqueConstraint(
        "integration_id", "day", "workspace_id", "model", "service_tier", "context_window", "api_key_id",
        "inference_geo", "extra_key", name="uq_usage_rows_grain",
    ),
)

# Restatements: when a re-read changes, adds or removes a stored row on a day that had data, the
# previous and new values are kept here with the time of the change.
revisions = Table(
    "revisions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(10), nullable=False),  # cost | usage
    Column("day", Date, nullable=False),
    Column("grain", Text, nullable=False),  # canonical JSON of the row's dimensions
    Column("previous", Text),  # amount (cost) or JSON counts (usage); NULL when the row appeared
    Column("current", Text),  # NULL when the row vanished upstream
    Column("changed_at", UTCDateTime, nullable=False),
    Column("run_id", Integer),
    Index("ix_revisions_integration_day", "integration_id", "day"),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(20), nullable=False),  # backfill | daily | manual
    Column("window_start", Date, nullable=False),
    Column("window_end", Date, nullable=False),  # inclusive
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("requests", Integer, nullable=False, default=0),
    Column("pages", Integer, nullable=False, default=0),
    Column("rows", Integer, nullable=False, default=0),
    Column("rate_limited", Integer, nullable=False, default=0),  # 429 answers
    Column("retries", Integer, nullable=False, default=0),
    Column("waited_seconds", Float, nullable=False, default=0.0),
    Column("duration_seconds", Float),
    Column("outcome", String(20), nullable=False),  # running | ok | error | interrupted
    Column("error", Text),
    Index("ix_sync_runs_integration_started", "integration_id", "started_at"),
    # Every poll looks for `running` records of dead processes: a few rows among a year of runs.
    Index("ix_sync_runs_running", "integration_id", sqlite_where=text("outcome = 'running'"),
          postgresql_where=text("outcome = 'running'")),
)

# GCRA state of each organization's request budget, shared by every process on this database.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("bucket", String(200), primary_key=True),
    Column("tat", Float, nullable=False),  # theoretical arrival time, epoch seconds
)

# One row per `cost-worker reconcile`: its summary, read by /metrics (latest drift per integration).
reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("integration_id", Integer),  # NULL: every integration's bill
    Column("sources", Text, nullable=False),  # the --source names, comma-separated; '' = all sources
    Column("since", Date, nullable=False),
    Column("until", Date, nullable=False),
    Column("group_by", String(20), nullable=False),
    Column("tolerance_pct", ExactDecimal, nullable=False),
    Column("billed_cost_usd", ExactDecimal, nullable=False),
    Column("tracked_cost_usd", ExactDecimal, nullable=False),
    Column("delta_usd", ExactDecimal, nullable=False),  # tracked - billed
    Column("unexplained_usd", ExactDecimal, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("drift_rows", Integer, nullable=False),
    Index("ix_reconcile_runs_integration_id", "integration_id"),
)

# --- watch: budgets, spend anomalies, notifications (written by `run`, read by /metrics and the dashboard) ---

# The latest evaluation of each configured budget (worker.watch.budgets); a budget removed from the config
# loses its row at the next evaluation.
budget_states = Table(
    "budget_states",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("scope", Text, nullable=False),
    Column("period", String(10), nullable=False),  # month | day
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, nullable=False),  # exclusive
    Column("limit_usd", ExactDecimal, nullable=False),
    Column("spend_usd", ExactDecimal, nullable=False),
    Column("forecast_usd", ExactDecimal, nullable=False),
    Column("status", String(20), nullable=False),  # ok | warn | over | forecast_over
    Column("evaluated_at", UTCDateTime, nullable=False),
)

# Spend anomalies `run` found over its trailing judging window (worker.watch.anomalies); a re-judged day
# (restated upstream) has exactly its current anomalies here.
spend_anomalies = Table(
    "spend_anomalies",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    Column("scope", String(20), nullable=False),  # integration | workspace | model
    Column("key", String(200), nullable=False),
    Column("cost_usd", ExactDecimal, nullable=False),
    Column("baseline_usd", ExactDecimal, nullable=False),
    Column("score", Float, nullable=False),
    Column("direction", String(10), nullable=False),  # spike | drop
    Column("detected_at", UTCDateTime, nullable=False),
    UniqueConstraint("integration_id", "day", "scope", "key", name="uq_spend_anomalies_grain"),
)

# Last known state per watched subject (an integration's error/ok, a reconcile scope's drift/ok, and the
# evaluation marker), with a claim so one replica at a time evaluates; `seq` numbers the state changes.
watch_states = Table(
    "watch_states",
    metadata,
    Column("subject", String(300), primary_key=True),
    Column("state", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("claimed_by", String(100)),
    Column("claimed_until", UTCDateTime),
)

# The notification outbox: one row per (event, webhook), unique, so replicas never send one twice; a
# sender claims a row before it posts. `target` is a fingerprint of the webhook URL, never the URL.
notifications = Table(
    "notifications",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_key", String(300), nullable=False),
    Column("target", String(64), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("payload", Text, nullable=False),  # the event as JSON
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(10), nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_by", String(100)),
    Column("claimed_until", UTCDateTime),
    Column("sent_at", UTCDateTime),
    Column("last_error", Text),
    UniqueConstraint("event_key", "target", name="uq_notifications_event"),
    Index("ix_notifications_due", "status", "next_attempt_at"),
)

# A digest of each stored day's rows per table (and grouping): a re-read that brings the same rows is
# recognised without reading them back (worker.storage.repo._replace_days).
day_digests = Table(
    "day_digests",
    metadata,
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(10), primary_key=True),  # cost | usage | a_cost | a_usage (as in revisions)
    Column("scope", String(20), primary_key=True),  # the analytics grouping, '' for the legacy tables
    Column("day", Date, primary_key=True),
    Column("digest", String(32), nullable=False),
)

# The legacy reports summed per integration, UTC day and model ('' = no model: fees), kept in step with
# cost_rows and usage_rows by every replacement of their days (worker.storage.totals): what `report`, the
# API's `spend` and the dashboard read, a few rows a day instead of hundreds.
daily_model_totals = Table(
    "daily_model_totals",
    metadata,
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("cost_usd", ExactDecimal, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),  # uncached input
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),  # 5 minute and 1 hour cache writes together
    Index("ix_daily_model_totals_day", "day"),
)

# --- the Usage and Cost Analytics API (see worker/storage/analytics.py for the data functions) ----------
#
# Rows per UTC day and grain. `grouping` names the group_by[] set the row came from ('main': the
# configured dimensions; 'product': model and product): rows of different groupings are two views of
# the same cost and are never added up. Absent dimensions are '' as in the legacy tables; `actor_id` is
# the tagged id of the user, service account or API key the usage is attributed to (a federated identity
# is `<provider>:<subject>`); `other` is canonical JSON of further dimensions ('' when none).

_ANALYTICS_GRAIN = ("grouping", "model", "workspace_id", "api_key_id", "actor_type", "actor_id", "service_tier",
                    "context_window", "inference_geo", "speed", "product", "other")


def _analytics_dimensions() -> list[Column[str]]:
    lengths = {"grouping": 20, "model": 200, "workspace_id": 100, "api_key_id": 100, "actor_type": 50,
               "actor_id": 500, "service_tier": 50, "context_window": 50, "inference_geo": 50, "speed": 20,
               "product": 100}
    return [Column(name, String(length), nullable=False) for name, length in lengths.items()] + [
        Column("other", Text, nullable=False)]


analytics_cost_rows = Table(
    "analytics_cost_rows",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    *_analytics_dimensions(),
    Column("cost_type", String(100), nullable=False),
    Column("token_type", String(200), nullable=False),
    Column("amount_usd", ExactDecimal, nullable=False),  # billed: post-discount, pre-credit
    Column("list_amount_usd", ExactDecimal, nullable=False),  # list price, pre-discount
    Column("currency", String(10), nullable=False),
    Column("requests", BigInteger),  # NULL when grouped by cost_type/token_type (the API has no split)
    UniqueConstraint("integration_id", "day", *_ANALYTICS_GRAIN, "cost_type", "token_type",
                     name="uq_analytics_cost_rows_grain"),
)

analytics_usage_rows = Table(
    "analytics_usage_rows",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    *_analytics_dimensions(),
    Column("uncached_input_tokens", BigInteger, nullable=False),
    Column("cache_read_input_tokens", BigInteger, nullable=False),
    Column("cache_creation_5m_input_tokens", BigInteger, nullable=False),
    Column("cache_creation_1h_input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("web_search_requests", BigInteger, nullable=False),
    Column("requests", BigInteger),
    UniqueConstraint("integration_id", "day", *_ANALYTICS_GRAIN, name="uq_analytics_usage_rows_grain"),
)

# Names behind the ids: API keys and workspaces (from their list endpoints, at most daily) and users
# (from the actor objects of the rows). kind: api_key | workspace | user.
analytics_names = Table(
    "analytics_names",
    metadata,
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("id", String(500), primary_key=True),
    Column("name", String(500)),
    Column("email", String(500)),
    Column("workspace_id", String(100)),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Per integration: whether Anthropic serves it the Analytics API, the latest `data_refreshed_at`, and
# when the names were last read.
analytics_state = Table(
    "analytics_state",
    metadata,
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(20), nullable=False),  # ok | refused
    Column("detail", Text),  # why it was refused (the API's message)
    Column("refreshed_at", UTCDateTime),
    Column("names_refreshed_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Backfill checkpoints of the analytics streams (cost/usage x grouping): the first day of the stream, the
# next day to fetch, and the end of the days stored so far (backfill and re-reads: what reports may use).
analytics_checkpoints = Table(
    "analytics_checkpoints",
    metadata,
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True),
    Column("stream", String(30), primary_key=True),
    Column("first_day", Date, nullable=False),
    Column("checkpoint", Date, nullable=False),
    Column("synced_until", Date, nullable=False),
)

# The Analytics API's bill of grouping 'main' summed per integration, UTC day and one dimension
# (`dimension`: model | api_key | actor; `key` its value, '' when the rows have none), the cost rows' sums and
# the usage rows' sums apart (`part`), kept in step with analytics_cost_rows and analytics_usage_rows by every
# replacement of their days
# (worker.storage.analytics_totals): what the dashboard's overview reads, a few rows a day instead of dozens.
analytics_daily_totals = Table(
    "analytics_daily_totals",
    metadata,
    Column("integration_id", Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("dimension", String(10), primary_key=True),
    Column("key", String(500), primary_key=True),
    Column("part", String(5), primary_key=True),  # cost (the money columns) | usage (the tokens): each refreshed alone
    Column("cost_usd", ExactDecimal, nullable=False),
    Column("list_cost_usd", ExactDecimal, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),  # uncached input
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),  # 5 minute and 1 hour cache writes together
    Index("ix_analytics_daily_totals_day", "dimension", "part", "day"),
)

__all__ = ["analytics_checkpoints", "analytics_cost_rows", "analytics_daily_totals", "analytics_names", "analytics_state",
           "analytics_usage_rows", "budget_states", "cost_rows", "day_digests", "integrations", "metadata",
           "notifications", "rate_buckets", "reconcile_runs", "revisions", "spend_anomalies", "sync_runs",
           "usage_rows", "watch_states"]
