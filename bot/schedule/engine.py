"""When each job is due, and running it once: missed runs coalesced, DST repeats skipped, no overlap.

APScheduler 3's CronTrigger computes fire times (cron fields, time zones, DST
gaps); this module owns the rest, because APScheduler's scheduler keeps its
state in a job store (pickled, or in memory and forgotten at restart) and reads
the wall clock itself. Here the clock is injected, the last run of each job is
a row in SQLite, and nothing runs unless this process holds the scheduler
lease. Time is UTC inside; only the triggers think in the configured zone.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from bot.schedule import cron
from bot.schedule.runs import LastRun, RunTable
from bot.schedule.settings import Schedule
from bot.store.owner import Owner, alive

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
RETRY_AFTER = timedelta(minutes=5)  # a failed run (a digest Slack did not take) is tried again after this
MAX_ATTEMPTS = 3
LATE = timedelta(minutes=2)  # a run started later than this after its fire time says so
MAX_STEPS = 200_000  # fire times walked when catching up (a minutely job missed for months)
FINISH_BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # seconds between tries to record a run's end (store locked)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    result: str  # ok, failed, refused, skipped
    detail: str = ""


@dataclass(frozen=True)
class Job:
    name: str
    cron: str
    run: Callable[[str], Outcome]  # gets a note ("" or "late: ...") and does the work
    about: str = ""


@dataclass(frozen=True)
class Due:
    job: Job
    fire: datetime  # UTC
    missed: int  # earlier fire times folded into this one
    late: bool
    retry: bool = False


@dataclass(frozen=True)
class JobStatus:
    name: str
    cron: str
    timezone: str
    about: str
    last: LastRun | None
    next_fire: datetime | None
    running: bool


class Scheduler:
    def __init__(
        self,
        schedule: Schedule,
        runs: RunTable,
        jobs: list[Job],
        leader: Callable[[], bool],
        clock: Clock = utcnow,
        inline: bool = False,
    ) -> None:
        """``leader()`` takes or renews the lease; ``inline`` runs jobs in the caller's thread (tests)."""
        self.schedule, self.runs, self.leader, self.clock, self.inline = schedule, runs, leader, clock, inline
        self.jobs = {j.name: j for j in jobs}
        self.triggers: dict[str, CronTrigger] = {j.name: cron.trigger(j.cron, schedule.tz) for j in jobs}
        self.daily = {j.name: cron.daily(j.cron) for j in jobs}
        self.fixed_hour = {j.name: "*" not in cron.parse(j.cron)[1] for j in jobs}
        self.unfinished: list[Callable[[], None]] = []  # run ends the store refused; retried at each tick
        self.unfinished_lock = threading.Lock()  # job threads add, the tick loop takes
        self.threads: dict[str, threading.Thread] = {}
        self.me = Owner.me()

    # -- fire times -----------------------------------------------------------------

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.schedule.tz)

    def wall(self, at: datetime) -> str:
        return self.local(at).strftime("%Y-%m-%dT%H:%M")

    def next_fire(self, name: str, after: datetime, last_local: str = "") -> datetime | None:
        """The first fire strictly after ``after`` that is not a DST repeat of the run at ``last_local``."""
        trigger, t = self.triggers[name], after.astimezone(UTC)
        for _ in range(4):
            nxt = trigger.get_next_fire_time(None, t + timedelta(microseconds=1))
            if nxt is None:
                return None
            nxt = nxt.astimezone(UTC)
            if not self._repeat(name, nxt, last_local):
                return nxt
            t = nxt
        return None

    def _repeat(self, name: str, fire: datetime, last_local: str) -> bool:
        """02:30 twice on the autumn change: the same wall time, or a second run on one local date.

        A job at fixed hours (``0,30 2 * * *``) runs once per wall time, as cron does: the second pass
        through the repeated hour (``fold == 1``) is skipped. An hourly job keeps firing every hour.
        """
        if self.fixed_hour[name] and self.local(fire).fold == 1:
            return True
        if not last_local:
            return False
        wall = self.wall(fire)
        return wall == last_local or (self.daily[name] and wall[:10] == last_local[:10])

    def due(self, name: str, now: datetime) -> Due | None:
        """The run owed at ``now``: the latest fire time not yet handled, with the earlier ones folded in."""
        last = self.runs.get(name)
        if last is None:
            self.runs.baseline(name, now, "")
            return None
        fire = self.next_fire(name, last.last_fire, last.last_local)
        if fire is None or fire > now:
            if last.result == "failed" and last.attempts < MAX_ATTEMPTS and self._retry_ready(last, now):
                return Due(self.jobs[name], last.last_fire, 0, True, retry=True)
            return None
        missed = 0
        for _ in range(MAX_STEPS):
            following = self.next_fire(name, fire, self.wall(fire))
            if following is None or following > now:
                break
            fire, missed = following, missed + 1
        return Due(self.jobs[name], fire, missed, now - fire > LATE)

    def _retry_ready(self, last: LastRun, now: datetime) -> bool:
        ended = datetime.fromisoformat(last.ended) if last.ended else last.last_fire
        in_grace = now - last.last_fire <= timedelta(minutes=self.schedule.grace_minutes)
        return in_grace and now - ended >= RETRY_AFTER

    # -- running ----------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Start every due job (if we hold the lease); returns the names started."""
        if not self.jobs or not self.leader():
            return []
        self._flush_unfinished()
        now, started = self.clock(), []
        for name in self.jobs:
            owed = self.due(name, now)
            if owed is not None and self._start(owed, now):
                started.append(name)
        return started

    def _start(self, owed: Due, now: datetime) -> bool:
        name = owed.job.name
        grace = max(timedelta(minutes=self.schedule.grace_minutes), LATE)  # grace 0: no late runs, on time runs
        token = f"{self.me.pid}/{self.me.boot}/{self.me.started}/{secrets.token_hex(4)}"
        if not self._claim(name, token):
            return False  # still running: never two runs of one job at once
        local = self.wall(owed.fire)
        if now - owed.fire > grace:
            why = f"missed {owed.missed + 1} run(s) while no bot held the schedule; the latest was due "
            why += f"{self.local(owed.fire):%Y-%m-%d %H:%M %Z}, past the {self.schedule.grace_minutes} min grace"
            self.runs.finish(name, token, owed.fire, local, now, now, "missed", why)
            log.warning("job %s: %s", name, why)
            return False
        note = ""
        if owed.retry:
            note = f"retry of the run due {self.local(owed.fire):%Y-%m-%d %H:%M %Z}"
        elif owed.late:
            note = f"late: due {self.local(owed.fire):%Y-%m-%d %H:%M %Z}"
            note += f", {owed.missed} earlier run(s) folded into this one" if owed.missed else ""
        work = lambda: self._run(owed, token, local, note)  # noqa: E731
        if self.inline:
            work()
        else:
            thread = threading.Thread(target=work, name=f"job-{name}", daemon=True)
            self.threads[name] = thread
            thread.start()
        return True

    def _claim(self, name: str, token: str) -> bool:
        if self.runs.claim(name, token):
            return True
        last = self.runs.get(name)
        holder = last.running if last else ""
        parts = holder.split("/")
        if len(parts) == 4 and parts[0].isdigit() and not alive(Owner(int(parts[0]), parts[1], parts[2])):
            self.runs.release_stale(name, holder)  # its process died mid-run
            return self.runs.claim(name, token)
        return False

    def _run(self, owed: Due, token: str, local: str, note: str) -> None:
        started, clock0 = self.clock(), time.monotonic()
        try:
            outcome = owed.job.run(note)
        except Exception as e:  # a job never kills the scheduler; the row says what happened
            log.exception("job %s failed", owed.job.name)
            outcome = Outcome("failed", f"internal error: {type(e).__name__}")
        ended = max(self.clock(), started + timedelta(seconds=time.monotonic() - clock0))
        detail = "; ".join(x for x in (outcome.detail, note) if x)
        self._finish(lambda: self.runs.finish(owed.job.name, token, owed.fire, local, started, ended,
                                              outcome.result, detail))  # fmt: skip

    def _finish(self, record: Callable[[], None]) -> None:
        """Record a run's end, trying again with backoff while the store is locked.

        A run whose end is never written keeps its ``running`` marker, and since this process is
        alive no one would ever free it: the job would never run again. So the end is retried here,
        and if the store stays locked it is kept and retried at every tick; the thread never dies.
        """
        for pause in (*FINISH_BACKOFF, None):
            try:
                record()
                return
            except Exception as e:  # sqlite3.OperationalError: database is locked (or any store failure)
                if pause is None:
                    log.warning("job run end not recorded (%s); kept, tried again at the next tick", e)
                    with self.unfinished_lock:
                        self.unfinished.append(record)
                    return
                time.sleep(pause)

    def _flush_unfinished(self) -> None:
        """Write run ends the store refused before; the ones it still refuses stay for the next tick."""
        with self.unfinished_lock:
            pending, self.unfinished = self.unfinished, []
        for record in pending:
            try:
                record()
            except Exception as e:
                log.warning("job run end still not recorded (%s)", e)
                with self.unfinished_lock:
                    self.unfinished.append(record)

    def wait(self) -> None:
        """Join job threads started by tick (tests and shutdown)."""
        for thread in list(self.threads.values()):
            thread.join()

    # -- reading ------------------------------------------------------------------------

    def status(self) -> list[JobStatus]:
        now, out = self.clock(), []
        for name, job in self.jobs.items():
            last = self.runs.get(name)
            after = max(now, last.last_fire) if last else now
            nxt = self.next_fire(name, after, last.last_local if last else "")
            out.append(
                JobStatus(name, job.cron, self.schedule.timezone, job.about, last, nxt, bool(last and last.running))
            )
        return out

    def seconds_to_next(self) -> float:
        """How long the loop may sleep: until the next fire, at most a minute."""
        now = self.clock()
        fires = [s.next_fire for s in self.status() if s.next_fire]
        return max(1.0, min([60.0, *((f - now).total_seconds() for f in fires)]))

    def serve(self, stop: threading.Event, renew_every: float = 10.0) -> None:
        """The `vmbot run` loop: tick, then sleep until the next fire, renewing the lease meanwhile."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; trying again")
            if stop.wait(min(renew_every, self.seconds_to_next())):
                return
