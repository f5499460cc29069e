"""Cron expressions with cron's meaning, turned into APScheduler 3 triggers.

APScheduler 3 counts ``day_of_week`` from Monday, so its own
``CronTrigger.from_crontab("0 8 * * 0")`` fires on Mondays; cron means Sunday
(and 7 is Sunday too). The day-of-week field is therefore read here and handed
to APScheduler as day names. Cron's other quirk, "either day" when both the
day-of-month and day-of-week fields are restricted, has no APScheduler
equivalent: such an expression is refused rather than run on the wrong days.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo

from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # cron's numbering: 0 (and 7) is Sunday
NICKNAMES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0"}
NICKNAMES |= {"@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
FIELD = re.compile(r"^[A-Za-z0-9*/,-]+\Z")
SINGLE = re.compile(r"^\d{1,2}\Z")


class CronError(ValueError):
    """The expression is not one cron would read the same way; the message says why."""


def _day(word: str) -> int:
    """0..7 as written (7 stays 7 so that a range ending in 7 reaches Sunday); names give 0..6."""
    word = word.lower()
    if word in DAY_NAMES:
        return DAY_NAMES.index(word)
    if word.isdigit() and int(word) <= 7:
        return int(word)
    raise CronError(f"day of week '{word}' is not 0-7 or sun..sat")


def weekdays(field: str) -> list[int]:
    """The days a cron day-of-week field selects, 0 = Sunday, in cron's meaning."""
    days: set[int] = set()
    for part in field.split(","):
        base, slash, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if slash and step is None:
            raise CronError(f"day-of-week step '{step_text}' must be a whole number above 0")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = _day(a), _day(b)
            if last == 0 and first > 0:  # 1-7, mon-sun: Sunday as the end of the week
                last = 7
            if last < first:
                raise CronError(f"day-of-week range '{base}' runs backwards")
        else:
            first = last = _day(base) % 7
            if step:
                last = 6
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return sorted(days)


def parse(expr: str) -> tuple[str, str, str, str, str]:
    """Five fields, checked for shape; nicknames like @daily expanded."""
    if not isinstance(expr, str):
        raise CronError('must be a cron expression string like "0 8 * * *"')
    if not expr.isprintable():
        raise CronError("must be one line of printable text (no newlines, tabs or control characters)")
    text = NICKNAMES.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"'{expr}' has {len(fields)} field(s); cron wants 5: minute hour day month weekday")
    if not all(FIELD.match(f) for f in fields):
        raise CronError(f"'{expr}' has characters cron does not read")
    return fields[0], fields[1], fields[2], fields[3], fields[4]


def trigger(expr: str, tz: tzinfo) -> CronTrigger:
    """An APScheduler CronTrigger that fires when cron would, in ``tz``; CronError if it cannot."""
    minute, hour, dom, month, dow = parse(expr)
    if dom != "*" and dow != "*":
        raise CronError(
            f"'{expr}' restricts both day of month and day of week; cron then runs on either day, "
            "which this scheduler does not do: use one of them"
        )
    days = ",".join(DAY_NAMES[d] for d in weekdays(dow)) if dow != "*" else "*"
    try:
        return CronTrigger(minute=minute, hour=hour, day=dom, month=month, day_of_week=days, timezone=tz)
    except ValueError as e:
        raise CronError(f"'{expr}': {e}") from None


def can_fire(expr: str, tz: tzinfo, now: datetime) -> bool:
    """False for an expression no calendar date ever matches (``0 8 31 2 *``): it would never run, silently."""
    return trigger(expr, tz).get_next_fire_time(None, now) is not None


def daily(expr: str) -> bool:
    """At most one run per local date: one minute, one hour (the jobs DST must never run twice)."""
    minute, hour, *_ = parse(expr)
    return bool(SINGLE.match(minute) and SINGLE.match(hour))
