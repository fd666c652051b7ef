"""Column types shared by the models: aware UTC datetimes on every database (SV-4)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from server.errors import NaiveDatetimeError

UTC = dt.UTC


def utcnow() -> dt.datetime:
    """The current instant as an aware UTC datetime."""
    return dt.datetime.now(UTC)


def require_aware(value: dt.datetime) -> dt.datetime:
    """Return ``value`` converted to UTC.

    :raises NaiveDatetimeError: if ``value`` has no UTC offset (a naive datetime
        is ambiguous: it is exactly the SV-4 bug).
    :raises ValueError: ``value`` is out of range once converted to UTC (e.g.
        ``9999-12-31T23:59:59-23:59`` is in year 10000), not ``OverflowError``, so
        callers that refuse bad input with ``ValueError`` refuse this too.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetimeError(f"naive datetime {value.isoformat()} rejected: give a UTC offset")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range in UTC (years 1 to 9999)") from None


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp column that takes and returns aware UTC datetimes only.

    SQLite has no time-zone type: ``DateTime(timezone=True)`` silently drops the
    offset there. This decorator rejects naive input, converts aware input to
    UTC before binding (stored as UTC on SQLite, ``timestamptz`` on PostgreSQL)
    and attaches/normalises ``tzinfo=UTC`` on the way out, so the same code
    behaves identically on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"UTCDateTime needs a datetime, got {type(value).__name__}")
        aware = require_aware(value)
        if dialect.name == "sqlite":
            # SQLite stores the text form; keep it offset-free and in UTC so it sorts.
            return aware.replace(tzinfo=None)
        return aware

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
