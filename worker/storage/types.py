"""Column types that keep money exact and time in UTC on every backend."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

from worker.money import EXACT  # adds money without rounding whatever its digits

__all__ = ["EXACT", "ExactDecimal", "UTCDateTime", "driver_marker", "exact_money", "money_text", "sqlite_date"]


def exact_money(value: Any) -> Decimal:
    """`value` itself when it is a finite Decimal: money never goes through float, on any path."""
    if not isinstance(value, Decimal):
        raise TypeError(f"money must be Decimal, got {type(value).__name__}")
    if not value.is_finite():
        raise ValueError("money must be a finite Decimal")
    return value


def money_text(value: Any) -> str:
    """The exact decimal text of money as SQLite stores it (PostgreSQL's NUMERIC comes back as Decimal)."""
    return value if isinstance(value, str) else format(exact_money(value), "f")


def driver_marker(conn: Connection) -> str:
    """The DB-API parameter marker of the connection's driver, for driver SQL (`exec_driver_sql`)."""
    style = conn.dialect.paramstyle
    if style == "qmark":
        return "?"
    if style in ("format", "pyformat"):
        return "%s"
    raise NotImplementedError(f"driver paramstyle {style!r} is not supported")  # pragma: no cover


def sqlite_date(value: Any) -> str:
    """A date as SQLAlchemy's SQLite DATE stores it ('YYYY-MM-DD'), for writes that bypass its types."""
    if not isinstance(value, date):
        raise TypeError(f"SQLite DATE only accepts date objects, got {type(value).__name__}")
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC (unconstrained, exact) on PostgreSQL; canonical decimal TEXT on SQLite.

    SQLite has no exact numeric type: SQLAlchemy would round-trip Numeric through float, so the
    amount is stored as text there and every sum is done with Decimal in Python.
    """

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(64))
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact_money(value)
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in, aware UTC datetimes out (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: times must be timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = value
        return stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored.astimezone(UTC)
