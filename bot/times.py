"""Times: the one module that turns a moment into text, for people and for the store.

Every time a user reads is in UTC and says so ("10:02 UTC"): the bot, its
hosts and the people asking may sit in different zones, and one zone named in
every line is the one nobody misreads. (``[schedule] timezone`` is for when
schedules fire, not for how times are shown.) Stored timestamps are ISO 8601
in UTC, so rows sort and compare as text.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds"]
When = float | datetime | str  # a Unix time, an aware datetime, or a stored ISO timestamp


def utc(t: When | None = None) -> datetime:
    """Any ``When`` (or now) as an aware datetime in UTC."""
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    if isinstance(t, datetime):
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)  # stored without a zone: UTC
    return datetime.fromtimestamp(time.time() if t is None else t, UTC)


def iso(t: When | None = None, precision: Precision = "seconds") -> str:
    """The stored form: ``2026-11-25T10:02:03+00:00`` (audit rows use milliseconds)."""
    return utc(t).isoformat(timespec=precision)


def hhmm(t: When) -> str:
    """``10:02 UTC``: approval expiry, since when a host is down."""
    return utc(t).strftime("%H:%M UTC")


def clock(t: When) -> str:
    """``10:02:03 UTC`` today, the date too on another day: since when a VM is in its state, who holds a lock."""
    at = utc(t)
    return at.strftime("%H:%M:%S UTC") if at.date() == utc().date() else full(at)


def full(t: When) -> str:
    """``2026-11-24 10:02:03 UTC``: audit rows."""
    return utc(t).strftime("%Y-%m-%d %H:%M:%S UTC")


def minute(t: When) -> str:
    """``2026-11-25 10:02 UTC``: when a freeze began, when a request expires."""
    return utc(t).strftime("%Y-%m-%d %H:%M UTC")


def compact(t: When | None = None) -> str:
    """``20261125-100203``, UTC: a time inside a file name (sorts as text, no spaces or colons)."""
    return utc(t).strftime("%Y%m%d-%H%M%S")
