"""The last-run table: what each job last did, kept in the store so a restart knows what it missed.

One row per job, never code: the jobs themselves come from the config. A run
is claimed with one compare-and-set on ``running``, so a job never runs twice
at once, even if the lease changed hands in the middle of a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from bot.store.db import Store

COLUMNS = {
    "job": str,
    "last_fire": str,  # UTC ISO time of the scheduled fire last handled (run, skipped or missed)
    "last_local": str,  # the same fire in the job's time zone, wall clock: DST repeats are seen here
    "started": str,
    "ended": str,
    "result": str,  # ok, failed, refused, skipped, missed; "" = never ran
    "detail": str,
    "duration": float,
    "attempts": int,  # runs for last_fire (a failed post is retried)
    "last_success": str,
    "running": str,  # owner token while a run is in progress, else ""
}


@dataclass(frozen=True)
class LastRun:
    job: str
    last_fire: datetime
    last_local: str
    started: str
    ended: str
    result: str
    detail: str
    duration: float
    attempts: int
    last_success: str
    running: str


class RunTable:
    def __init__(self, db: Store, configured: Iterable[str] | None = None) -> None:
        """``configured``: the jobs [schedule] names now; rows of jobs removed from it stay but are not shown."""
        self.db = db
        self.configured = None if configured is None else frozenset(configured)
        db.create("job_runs", COLUMNS, "job")

    def get(self, job: str) -> LastRun | None:
        rows = self.db.dicts("SELECT * FROM job_runs WHERE job = ?", [job])
        if not rows:
            return None
        row = rows[0]
        row["last_fire"] = datetime.fromisoformat(row["last_fire"])
        row["duration"] = float(row["duration"] or 0.0)
        row["attempts"] = int(row["attempts"] or 0)
        return LastRun(**{k: ("" if v is None else v) for k, v in row.items()})

    def baseline(self, job: str, fire: datetime, local: str) -> None:
        """A job seen for the first time starts from now: nothing before it was ever due."""
        self.db.run(
            "INSERT OR IGNORE INTO job_runs (job, last_fire, last_local, started, ended, result, detail, duration,"
            " attempts, last_success, running) VALUES (?, ?, ?, '', '', '', '', 0, 0, '', '')",
            [job, fire.isoformat(), local],
        )

    def claim(self, job: str, token: str) -> bool:
        """Take the job for one run; False if a run is already in progress."""
        return self.db.run("UPDATE job_runs SET running = ? WHERE job = ? AND running = ''", [token, job]) == 1

    def release_stale(self, job: str, token: str) -> None:
        """Free a claim left by a process that died mid-run (the caller checked it is not ours)."""
        self.db.run("UPDATE job_runs SET running = '' WHERE job = ? AND running = ?", [job, token])

    def finish(
        self, job: str, token: str, fire: datetime, local: str, started: datetime, ended: datetime, result: str,
        detail: str,
    ) -> None:  # fmt: skip
        row = self.get(job)
        attempts = (row.attempts + 1) if row and row.last_fire == fire else 1
        success = ended.isoformat() if result == "ok" else (row.last_success if row else "")
        self.db.run(
            "UPDATE job_runs SET last_fire = ?, last_local = ?, started = ?, ended = ?, result = ?, detail = ?,"
            " duration = ?, attempts = ?, last_success = ?, running = '' WHERE job = ? AND running = ?",
            [
                fire.isoformat(), local, started.isoformat(), ended.isoformat(), result, detail,
                (ended - started).total_seconds(), attempts, success, job, token,
            ],
        )  # fmt: skip

    def all(self) -> list[LastRun]:
        """The rows of the configured jobs: a job dropped from [schedule] must not alert on its old failure."""
        names = [r[0] for r in self.db.all("SELECT job FROM job_runs ORDER BY job")]
        names = [n for n in names if self.configured is None or n in self.configured]
        return [r for n in names if (r := self.get(n))]
