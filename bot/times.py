"""Times as users read them.

One home for the helpers that turn a timestamp into words, so the next
feature (backups, schedules, reports) finds the one it should use instead of
writing another. Approval deadlines are said in UTC, with the zone named.
"""

from __future__ import annotations

from datetime import UTC, datetime


def hhmm(t: float) -> str:
    """A Unix time as ``14:05 UTC`` (approval expiry in replies and listings)."""
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M UTC")
