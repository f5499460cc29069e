"""Times users read are UTC and say so; stored timestamps of every vintage read back as the same moment."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from bot import times

MOMENT = datetime(2026, 11, 24, 10, 2, 3, 456000, tzinfo=UTC)


def test_every_rendered_time_names_utc_whatever_zone_it_came_in() -> None:
    berlin = MOMENT.astimezone(timezone(timedelta(hours=1)))
    assert times.hhmm(berlin) == "10:02 UTC" and times.hhmm(MOMENT.timestamp()) == "10:02 UTC"
    assert times.minute(berlin) == "2026-11-24 10:02 UTC"
    assert times.full("2026-11-24T11:02:03.456+01:00") == "2026-11-24 10:02:03 UTC"
    assert times.clock(MOMENT) == "2026-11-24 10:02:03 UTC"  # not today: the date too
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC", times.clock(times.utc()))


def test_stored_forms_round_trip_and_a_zoneless_row_is_utc() -> None:
    assert times.iso(MOMENT) == "2026-11-24T10:02:03+00:00"
    assert times.iso(MOMENT, "milliseconds") == "2026-11-24T10:02:03.456+00:00"
    assert times.utc(times.iso(MOMENT, "milliseconds")) == MOMENT
    assert times.utc("2026-11-24T10:02:03") == MOMENT.replace(microsecond=0)  # old rows had no zone: UTC, not local
    assert times.compact(MOMENT) == "20261124-100203"
