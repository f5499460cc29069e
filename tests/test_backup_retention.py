"""Retention over a synthetic two-year calendar: Proxmox's semantics, worked out by hand and as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.backup.catalog import Entry
from bot.backup.retention import KEEP, RULES, Item, marks, plan

START = datetime(2024, 1, 1, 2, 0)
TWO_YEARS = [START + timedelta(days=d) for d in range(731)]  # 2024-01-01 .. 2025-12-31, daily at 02:00


def items(times: list[datetime]) -> list[Item]:
    return [Item(t.isoformat(), t) for t in times]


def kept_days(keep: dict[str, int], times: list[datetime] = TWO_YEARS) -> list[str]:
    verdict = marks(items(times), keep)
    return sorted((i for i, m in verdict.items() if m == KEEP), reverse=True)


def test_two_years_of_daily_backups_keep_exactly_what_the_rules_say() -> None:
    # By hand: last 2 = Dec 31, 30. daily 3 = Dec 29, 28, 27 (31 and 30 are days already kept).
    # weekly 2: ISO weeks 2026-W01 (Dec 29-31) and 2025-W52 (Dec 22-28) hold kept backups, so the
    # newest of W51 (Sun Dec 21) and W50 (Sun Dec 14). monthly 3: December is kept already, so
    # the newest of November, October, September.
    got = kept_days({"keep_last": 2, "keep_daily": 3, "keep_weekly": 2, "keep_monthly": 3})
    want = ["2025-12-31", "2025-12-30", "2025-12-29", "2025-12-28", "2025-12-27", "2025-12-21", "2025-12-14"]
    want += ["2025-11-30", "2025-10-31", "2025-09-30"]
    assert [d[:10] for d in got] == want


def test_monthly_reaches_back_over_the_year_boundary() -> None:
    got = kept_days({"keep_monthly": 14})
    assert [d[:7] for d in got] == [f"2025-{m:02d}" for m in range(12, 0, -1)] + ["2024-12", "2024-11"]
    assert all(d[8:10] == last for d, last in zip(got, ["31", "30", "31", "30", "31", "31", "30", "31", "30",
                                                         "31", "28", "31", "31", "30"], strict=True))  # fmt: skip


def test_several_backups_a_day_daily_keeps_the_newest_of_each_day() -> None:
    times = [START + timedelta(hours=h) for h in range(0, 24 * 5, 6)]  # 4 a day for 5 days
    got = kept_days({"keep_daily": 3}, times)
    assert got == [(START + timedelta(days=d, hours=18)).isoformat() for d in (4, 3, 2)]


def test_every_rule_at_zero_keeps_everything() -> None:
    assert len(kept_days({"keep_last": 0, "keep_daily": 0})) == len(TWO_YEARS)


def entry(i: int, t: datetime, status: str = "good", uuid: str = "u1") -> Entry:
    return Entry(f"{i:04d}", "config", "kvm01", uuid, "web", t.isoformat(), 1, status, "n/a", False)


def test_the_newest_good_backup_survives_every_rule_and_bad_ones_go() -> None:
    old = [entry(i, START + timedelta(days=i)) for i in range(5)]
    newest_bad = entry(9, START + timedelta(days=9), "bad")
    kept, removed = plan([*old, newest_bad], {"keep_last": 0, "keep_daily": 0, "keep_monthly": 0, "keep_weekly": 0})
    assert [e.id for e in kept] == [e.id for e in old]  # all zero: keep-all, except the bad one
    kept, removed = plan([*old, newest_bad], {"keep_last": 1})
    assert [e.id for e in kept] == ["0004"] and newest_bad in removed


def test_vms_are_pruned_separately() -> None:
    a = [entry(i, START + timedelta(days=i), uuid="a") for i in range(3)]
    b = [entry(10 + i, START + timedelta(days=i), uuid="b") for i in range(3)]
    kept, _ = plan(a + b, {"keep_last": 1})
    assert sorted(e.id for e in kept) == ["0002", "0012"]


keeps = st.fixed_dictionaries({rule: st.integers(0, 6) for rule, _ in RULES})
calendars = st.lists(st.integers(0, 730 * 24), min_size=1, max_size=60, unique=True).map(
    lambda hours: [START.replace(tzinfo=UTC) + timedelta(hours=h) for h in hours]
)


@settings(max_examples=150, deadline=None)
@given(calendars, keeps)
def test_properties_of_any_calendar(times: list[datetime], keep: dict[str, int]) -> None:
    verdict = marks(items(times), keep)
    kept = [t for t in times if verdict[t.isoformat()] == KEEP]
    if not any(keep.values()):
        assert len(kept) == len(times)
        return
    assert len(kept) <= sum(keep.values())
    if keep["keep_last"]:
        assert max(times) in kept
        assert sorted(times, reverse=True)[: keep["keep_last"]] == sorted(kept, reverse=True)[: keep["keep_last"]]
    nonzero = [rule for rule, _ in RULES if keep[rule]]
    if len(nonzero) == 1 and nonzero[0] != "keep_last":  # one period rule alone: newest of each period, newest first
        period = dict(RULES)[nonzero[0]]
        assert all(t == max(u for u in times if period(u) == period(t)) for t in kept)
        assert len({period(t) for t in kept}) == len(kept) == min(keep[nonzero[0]], len({period(t) for t in times}))
    again = marks(items(kept), keep)  # pruning what was kept removes nothing more
    assert all(m == KEEP for m in again.values())
