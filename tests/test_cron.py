"""Cron expressions with cron's meaning on APScheduler's CronTrigger, and [schedule] checked at load."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.schedule.cron import CronError, trigger, weekdays
from bot.schedule.settings import read

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("0", ["Sun"]),
        ("7", ["Sun"]),
        ("sun", ["Sun"]),
        ("SUN", ["Sun"]),
        ("1", ["Mon"]),
        ("1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("5-7", ["Sun", "Fri", "Sat"]),
        ("sat,sun", ["Sun", "Sat"]),
        ("*/2", ["Sun", "Tue", "Thu", "Sat"]),
        ("1-7", ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]),
        ("0-7", ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]),
        ("7/2", ["Sun", "Tue", "Thu", "Sat"]),
        ("0-7/3", ["Sun", "Wed", "Sat"]),
    ],
)
def test_day_of_week_means_what_cron_means(field: str, days: list[str]) -> None:
    names = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    assert [names[d] for d in weekdays(field)] == days
    t = trigger(f"0 8 * * {field}", BERLIN)
    start = datetime(2026, 11, 22, 0, 0, tzinfo=BERLIN)  # a Sunday
    fired, at = set(), start
    for _ in range(14):
        at = t.get_next_fire_time(None, at + timedelta(seconds=1))
        fired.add(at.strftime("%a"))
        assert at.hour == 8
    assert sorted(fired, key=names.index) == days


def test_apscheduler_alone_gets_sunday_wrong_which_is_why_we_translate() -> None:
    from apscheduler.triggers.cron import CronTrigger

    raw = CronTrigger.from_crontab("0 8 * * 0", timezone=BERLIN)
    at = raw.get_next_fire_time(None, datetime(2026, 11, 22, 0, 0, tzinfo=BERLIN))
    ours = trigger("0 8 * * 0", BERLIN).get_next_fire_time(None, datetime(2026, 11, 22, 0, 0, tzinfo=BERLIN))
    assert at.strftime("%a") == "Mon" and ours.strftime("%a") == "Sun"


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("0 8 * *", "has 4 field(s)"),
        ("0 8 * * * *", "has 6 field(s)"),
        ("61 8 * * *", "61"),
        ("0 25 * * *", "25"),
        ("0 8 * * 8", "not 0-7"),
        ("0 8 * * fri-mon", "runs backwards"),
        ("0 8 1 * mon", "either day"),
        ("0 8 * * 1;reboot", "characters"),
        ("0 8 * * */0", "above 0"),
        ("", "has 0 field(s)"),
    ],
)
def test_bad_cron_expressions_are_refused_with_a_reason(expr: str, why: str) -> None:
    with pytest.raises(CronError, match=None) as e:
        trigger(expr, BERLIN)
    assert why in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"timezone": "Mars/Olympus"}, "not a known time zone"),
        ({"timezone": 3}, "time zone name"),
        ({"digest": 8}, "cron expression string"),
        ({"digest": "0 8 * * 9"}, "digest: day of week '9'"),
        ({"grace_minutes": "6h"}, "grace_minutes"),
        ({"grace_minutes": True}, "grace_minutes"),
        ({"disk_backup": "0 3 * * *"}, "needs disk_backup_vms"),
        ({"disk_backup_vms": "db-*"}, "list of VM globs"),
        ({"digest": "0 8 31 2 *"}, "would never run"),
        ({"digest": "0 8 30 2 *"}, "would never run"),
        ({"timezone": "Europe/Berlin\nX"}, "not a known time zone"),
        ({"digest": "0 8 * *\n*"}, "one line"),
    ],
)
def test_schedule_settings_are_type_checked(raw: dict, why: str) -> None:
    with pytest.raises(ValueError) as e:
        read(raw)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_a_cron_that_fires_only_on_leap_days_is_accepted() -> None:
    assert read({"digest": "0 8 29 2 *"}).jobs == {"digest": "0 8 29 2 *"}


# -- hostile review ------------------------------------------------------------------------


def test_hostile_day_of_week_0_to_7_is_every_day_as_in_cron() -> None:
    t = trigger("0 8 * * 0-7", BERLIN)
    at, fired = datetime(2026, 11, 22, 0, 0, tzinfo=BERLIN), set()  # a Sunday
    for _ in range(7):
        at = t.get_next_fire_time(None, at + timedelta(seconds=1))
        fired.add(at.strftime("%a"))
    assert len(fired) == 7, fired


def test_hostile_a_step_without_a_number_is_refused() -> None:
    with pytest.raises(CronError):
        trigger("0 8 * * 1/", BERLIN)
