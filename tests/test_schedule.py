"""The scheduler on a controllable clock: cron's weekdays, restarts, missed runs, DST, no overlap, the lease.

Real parts: APScheduler's CronTrigger, the SQLite last-run table and the lease
row in a store file under tmp_path. The clock is a variable; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.schedule.engine import Job, Outcome, Scheduler
from bot.schedule.runs import RunTable
from bot.schedule.settings import Schedule
from bot.store.audit import Audit
from bot.store.db import Store
from bot.store.locks import Locks
from bot.store.owner import Owner, start_time

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.astimezone(UTC)

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    audit = Audit(str(tmp_path / "vmbot.db"))
    db = Store(audit)
    yield db
    db.close()
    audit.close()


def make(store: Store, clock: Clock, crons: dict[str, str], tz: str = "Europe/Berlin", **kw: object):
    """A scheduler whose jobs record the local time they ran at."""
    ran: list[tuple[str, datetime, str]] = []

    def body(name: str):
        return lambda note: ran.append((name, clock().astimezone(ZoneInfo(tz)), note)) or Outcome("ok", "done")

    jobs = [Job(n, c, body(n)) for n, c in crons.items()]
    leader = kw.pop("leader", lambda: True)
    sched = Scheduler(Schedule(tz, dict(crons), **kw), RunTable(store), jobs, leader, clock, inline=True)  # type: ignore[arg-type]
    return sched, ran


def run_until(sched: Scheduler, clock: Clock, end: datetime, step: timedelta = timedelta(minutes=10)) -> None:
    while clock.now < end.astimezone(UTC):
        clock.now += step
        sched.tick()


# -- running at the right times ----------------------------------------------------------


def test_a_job_runs_at_its_time_once_and_a_restart_keeps_the_schedule(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
    sched, ran = make(store, clock, {"digest": "0 8 * * *"})
    assert sched.tick() == []  # first sight: nothing before now was ever due
    run_until(sched, clock, datetime(2026, 11, 23, 7, 45, tzinfo=BERLIN))
    assert ran == [] and clock.now == datetime(2026, 11, 23, 7, 50, tzinfo=BERLIN)
    run_until(sched, clock, datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN))
    assert [(n, t.strftime("%H:%M"), note) for n, t, note in ran] == [("digest", "08:00", "")]
    again, ran2 = make(store, clock, {"digest": "0 8 * * *"})  # a restart: a new scheduler on the same store
    run_until(again, clock, datetime(2026, 11, 24, 7, 45, tzinfo=BERLIN))
    assert ran2 == []
    run_until(again, clock, datetime(2026, 11, 24, 8, 10, tzinfo=BERLIN))
    assert len(ran2) == 1 and ran2[0][1].date().isoformat() == "2026-11-24"
    status = {s.name: s for s in again.status()}["digest"]
    assert status.last and status.last.result == "ok" and status.last.last_success
    assert status.next_fire == datetime(2026, 11, 25, 8, 0, tzinfo=BERLIN)


def test_runs_missed_while_down_happen_once_with_a_note(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
    sched, ran = make(store, clock, {"digest": "0 8 * * *"}, grace_minutes=600)
    sched.tick()
    clock.set(datetime(2026, 11, 26, 9, 30, tzinfo=BERLIN))  # down for three days
    again, ran = make(store, clock, {"digest": "0 8 * * *"}, grace_minutes=600)
    assert again.tick() == ["digest"]
    assert again.tick() == [] and len(ran) == 1
    assert "late: due 2026-11-26 08:00" in ran[0][2] and "3 earlier run(s) folded" in ran[0][2]
    assert "late" in again.runs.get("digest").detail  # type: ignore[union-attr]


def test_a_run_missed_beyond_the_grace_time_is_recorded_not_run(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
    sched, ran = make(store, clock, {"digest": "0 8 * * *"}, grace_minutes=60)
    sched.tick()
    clock.set(datetime(2026, 11, 23, 10, 0, tzinfo=BERLIN))
    assert sched.tick() == [] and ran == []
    last = sched.runs.get("digest")
    assert last and last.result == "missed" and "past the 60 min grace" in last.detail
    run_until(sched, clock, datetime(2026, 11, 24, 8, 10, tzinfo=BERLIN))
    assert len(ran) == 1  # the next day's run is on time again


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 2 * * *", "59 2 * * *"])
def test_autumn_dst_change_runs_a_daily_job_once_per_local_date(store: Store, expr: str) -> None:
    clock = Clock(datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN))  # Berlin falls back on 2026-10-25 03:00
    sched, ran = make(store, clock, {"job": expr})
    sched.tick()
    run_until(sched, clock, datetime(2026, 10, 27, 12, 0, tzinfo=BERLIN), timedelta(minutes=1))
    assert [t.date().isoformat() for _, t, _ in ran] == ["2026-10-25", "2026-10-26", "2026-10-27"]


def test_spring_dst_gap_still_runs_the_job_that_day(store: Store) -> None:
    clock = Clock(datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN))  # 02:00-03:00 does not exist on 2026-03-29
    sched, ran = make(store, clock, {"job": "30 2 * * *"})
    sched.tick()
    run_until(sched, clock, datetime(2026, 3, 30, 12, 0, tzinfo=BERLIN), timedelta(minutes=1))
    assert [t.date().isoformat() for _, t, _ in ran] == ["2026-03-29", "2026-03-30"]


def test_an_hourly_job_in_the_repeated_hour_runs_once_per_wall_time(store: Store) -> None:
    clock = Clock(datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN))
    sched, ran = make(store, clock, {"job": "30 * * * *"})
    sched.tick()
    run_until(sched, clock, datetime(2026, 10, 25, 5, 0, tzinfo=BERLIN), timedelta(minutes=1))
    walls = [t.strftime("%H:%M") for _, t, _ in ran]
    assert walls == ["00:30", "01:30", "02:30", "03:30", "04:30"]


def test_utc_jobs_and_other_zones(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
    sched, ran = make(store, clock, {"digest": "0 8 * * 1-5"}, tz="America/New_York")
    sched.tick()
    run_until(sched, clock, datetime(2026, 11, 30, 0, 0, tzinfo=UTC), timedelta(minutes=15))
    assert [t.strftime("%a %H:%M") for _, t, _ in ran] == [f"{d} 08:00" for d in ("Mon", "Tue", "Wed", "Thu", "Fri")]


# -- one run at a time, one runner ------------------------------------------------------------


def test_never_two_runs_of_one_job_at_once(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 59, tzinfo=BERLIN))
    release, entered, count = threading.Event(), threading.Event(), []

    def slow(note: str) -> Outcome:
        count.append(1)
        entered.set()
        release.wait(30)
        return Outcome("ok")

    sched = Scheduler(
        Schedule("Europe/Berlin", {"job": "* * * * *"}),
        RunTable(store),
        [Job("job", "* * * * *", slow)],
        lambda: True,
        clock,
    )
    sched.tick()
    clock.advance(minutes=1)
    assert sched.tick() == ["job"]
    assert entered.wait(10)
    for _ in range(5):
        clock.advance(minutes=1)
        assert sched.tick() == []  # still running: not started again, not queued
    other = Scheduler(sched.schedule, RunTable(store), list(sched.jobs.values()), lambda: True, clock)
    assert other.tick() == []  # nor by another scheduler on the same store
    release.set()
    sched.wait()
    assert len(count) == 1
    clock.advance(minutes=1)
    assert sched.tick() == ["job"]
    sched.wait()


def test_a_claim_left_by_a_dead_process_is_freed(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 59, tzinfo=BERLIN))
    sched, ran = make(store, clock, {"job": "* * * * *"})
    sched.tick()
    me = Owner.me()
    store.run("UPDATE job_runs SET running = ?", [f"{2**22 + 4321}/{me.boot}/1/dead"])
    clock.advance(minutes=1)
    assert sched.tick() == ["job"] and len(ran) == 1


def test_only_the_lease_holder_runs_jobs(store: Store) -> None:
    locks = Locks(store)
    other = subprocess.Popen(["sleep", "60"])
    try:
        me = Owner.me()
        store.run(
            "INSERT INTO leases (name, holder, pid, boot, started, expires)"
            " VALUES ('scheduler', 'other run', ?, ?, ?, ?)",
            [other.pid, me.boot, start_time(other.pid), 2e9],
        )
        leader = lambda: locks.renew_lease("scheduler", 60) or locks.acquire_lease("scheduler", 60)  # noqa: E731
        clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
        sched, ran = make(store, clock, {"digest": "0 8 * * *"}, leader=leader)
        run_until(sched, clock, datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN))
        assert ran == [] and sched.runs.get("digest") is None  # not even a baseline: we are not the runner
    finally:
        other.kill()
        other.wait(10)
    clock.set(datetime(2026, 11, 24, 7, 0, tzinfo=BERLIN))
    sched.tick()
    run_until(sched, clock, datetime(2026, 11, 24, 9, 0, tzinfo=BERLIN))
    assert len(ran) == 1


def test_a_failed_run_is_retried_then_left_alone(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
    tries: list[str] = []

    def flaky(note: str) -> Outcome:
        tries.append(note)
        return Outcome("failed", "Slack said ratelimited")

    sched = Scheduler(
        Schedule("Europe/Berlin", {"digest": "0 8 * * *"}),
        RunTable(store),
        [Job("digest", "0 8 * * *", flaky)],
        lambda: True,
        clock,
        inline=True,
    )
    sched.tick()
    run_until(sched, clock, datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN), timedelta(minutes=1))
    assert len(tries) == 3 and tries[1].startswith("retry of the run due 2026-11-23 08:00")
    last = sched.runs.get("digest")
    assert last and last.result == "failed" and last.attempts == 3 and last.last_success == ""


def test_a_job_that_raises_is_recorded_and_the_scheduler_goes_on(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 59, tzinfo=BERLIN))

    def boom(note: str) -> Outcome:
        raise RuntimeError("secret-token-xyz")

    sched = Scheduler(
        Schedule("UTC", {"j": "* * * * *"}),
        RunTable(store),
        [Job("j", "* * * * *", boom)],
        lambda: True,
        clock,
        inline=True,
    )
    sched.tick()
    clock.advance(minutes=1)
    assert sched.tick() == ["j"]
    last = sched.runs.get("j")
    assert last and last.result == "failed" and last.detail == "internal error: RuntimeError"


def test_vm_schedule_shows_cron_zone_last_result_duration_and_next_run(make_bot) -> None:
    from bot.config import demo
    from bot.store.audit import Actor

    config = demo()
    config.schedule = Schedule("Europe/Berlin", {"digest": "0 8 * * 1-5", "config_backup": "0 2 * * *"})
    config.slack = {"digest_channel": "C0DIGEST"}
    bot = make_bot(config)
    posted: list = []
    bot.desk.publish = lambda channel, report: posted.append((channel, report.kind))
    clock = Clock(datetime(2026, 11, 27, 7, 0, tzinfo=BERLIN))  # a Friday
    sched = bot.desk.scheduler(lambda: True, clock=clock, inline=True)
    sched.tick()
    clock.set(datetime(2026, 11, 27, 8, 0, tzinfo=BERLIN))
    assert sched.tick() == ["digest"] and posted == [("C0DIGEST", "status")]
    reply = bot.handle("schedule", Actor("U0ME", "C0OPS"))
    digest, backup = reply.lines
    assert digest.startswith("digest `0 8 * * 1-5` Europe/Berlin: next ") and "; last ok " in digest
    assert "s): Fleet status" in digest  # duration, then the run's result line
    assert backup == "config_backup `0 2 * * *`: not scheduled: backups are not configured: set [backups] dir"
    assert bot.audit.latest()[0]["action"] == "schedule"


def test_the_lease_is_renewed_while_a_long_job_runs(store: Store) -> None:
    """serve() keeps asking leader() (take or renew the lease) while a job is still running."""
    clock = Clock(datetime(2026, 11, 23, 7, 59, tzinfo=BERLIN))
    release, renewals = threading.Event(), []

    def long_job(note: str) -> Outcome:
        release.wait(30)
        return Outcome("ok")

    def leader() -> bool:
        renewals.append(clock())
        return True

    jobs = [Job("backup", "* * * * *", long_job)]
    sched = Scheduler(Schedule("UTC", {"backup": "* * * * *"}), RunTable(store), jobs, leader, clock)
    sched.tick()  # baseline
    clock.advance(minutes=1)
    stop = threading.Event()
    loop = threading.Thread(target=sched.serve, args=(stop, 0.02), daemon=True)
    loop.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while len(renewals) < 10:
            assert datetime.now(UTC) < deadline, "the lease was not renewed during the run"
            threading.Event().wait(0.01)
        last = sched.runs.get("backup")
        assert last and last.running  # still the same run
    finally:
        release.set()
        stop.set()
        loop.join(10)
        sched.wait()
    assert sched.runs.get("backup").result == "ok"  # type: ignore[union-attr]


# -- hostile review ------------------------------------------------------------------------


def test_hostile_two_fire_times_in_the_repeated_hour_run_once_per_wall_time(store: Store) -> None:
    clock = Clock(datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN))  # Berlin falls back on 2026-10-25 03:00
    sched, ran = make(store, clock, {"job": "0,30 2 * * *"})
    sched.tick()
    run_until(sched, clock, datetime(2026, 10, 25, 12, 0, tzinfo=BERLIN), timedelta(minutes=1))
    walls = [t.strftime("%H:%M") for _, t, _ in ran if t.date().isoformat() == "2026-10-25"]
    assert walls == ["02:00", "02:30"]


def test_hostile_a_store_locked_as_a_run_ends_does_not_stop_the_job_for_good(store: Store, tmp_path: Path) -> None:
    store.db.execute("PRAGMA busy_timeout = 200")  # the store waits 10 s; the defect is the same, the test faster
    other = sqlite3.connect(tmp_path / "vmbot.db", isolation_level=None, check_same_thread=False)

    def body(note: str) -> Outcome:  # another process (sqlite3 shell, a backup) holds the write lock for 1 s
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(1.0, other.execute, ["COMMIT"]).start()
        return Outcome("ok", "done")

    clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
    jobs = [Job("digest", "0 8 * * *", body)]
    schedule = Schedule("Europe/Berlin", {"digest": "0 8 * * *"})
    sched = Scheduler(schedule, RunTable(store), jobs, lambda: True, clock, inline=True)
    sched.tick()
    clock.set(datetime(2026, 11, 23, 8, 1, tzinfo=BERLIN))
    with contextlib.suppress(sqlite3.OperationalError):
        sched.tick()
    threading.Event().wait(1.5)  # the lock is gone
    clock.set(datetime(2026, 11, 24, 8, 1, tzinfo=BERLIN))
    assert sched.tick() == ["digest"]  # the next day's digest runs
    other.close()


def test_hostile_grace_zero_still_runs_jobs_that_are_on_time(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 23, 7, 0, tzinfo=BERLIN))
    sched, ran = make(store, clock, {"digest": "0 8 * * *"}, grace_minutes=0)
    sched.tick()
    clock.set(datetime(2026, 11, 23, 8, 0, 0, 300_000, tzinfo=BERLIN))  # serve() wakes a moment after the fire
    assert sched.tick() == ["digest"] and len(ran) == 1, sched.runs.get("digest")
