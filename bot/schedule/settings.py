"""``[schedule]`` read and type-checked at config load: the config is the scheduler's only source of jobs.

Nothing about jobs is stored anywhere else (no pickled job store: whoever could
write it would run code as root on the hypervisors). A bad time zone or cron
expression stops the bot at start with one line, not at 08:00 the next day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.schedule.cron import CronError, can_fire, trigger

# job name -> what it does (help text and `/vm schedule`); the config key is the job name
JOBS = {
    "digest": "daily status digest to [slack] digest_channel",
    "autostart_report": "autostart health report to [slack] digest_channel",
    "backup_report": "backup health report to [slack] digest_channel",
    "config_backup": "back up every VM's definition",
    "disk_backup": "back up the disks of the VMs in disk_backup_vms",
}
KEYS = {"timezone", "grace_minutes", "disk_backup_vms", *JOBS}
DEFAULT_GRACE_MINUTES = 360


@dataclass(frozen=True)
class Schedule:
    timezone: str = "UTC"
    jobs: dict[str, str] = field(default_factory=dict)  # job name -> cron expression
    grace_minutes: int = DEFAULT_GRACE_MINUTES  # a run missed by more than this is skipped, not run late
    disk_backup_vms: tuple[str, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def read(raw: dict) -> Schedule:
    """Check every key's type and every expression; ValueError with the one line to show."""
    tz_name = raw.get("timezone", "UTC")
    if not isinstance(tz_name, str) or not tz_name:
        raise ValueError('timezone must be a time zone name like "Europe/Berlin"')
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {tz_name!r} is not a known time zone (like Europe/Berlin or UTC)") from None
    jobs: dict[str, str] = {}
    for name in JOBS:
        if name not in raw:
            continue
        expr = raw[name]
        if not isinstance(expr, str):
            raise ValueError(f'{name} must be a cron expression string like "0 8 * * *"')
        try:
            trigger(expr, tz)
        except CronError as e:
            raise ValueError(f"{name}: {e}") from None
        if not can_fire(expr, tz, datetime.now(tz)):
            raise ValueError(f"{name}: {expr!r} matches no date (like Feb 31), so it would never run")
        jobs[name] = expr
    grace = raw.get("grace_minutes", DEFAULT_GRACE_MINUTES)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= 7 * 24 * 60:
        raise ValueError(f"grace_minutes must be a whole number of minutes from 0 to 10080 (got {grace!r})")
    vms = raw.get("disk_backup_vms", [])
    if not isinstance(vms, list) or not all(isinstance(v, str) and v for v in vms):
        raise ValueError('disk_backup_vms must be a list of VM globs like ["db-*", "kvm01/web-*"]')
    if "disk_backup" in jobs and not vms:
        raise ValueError('disk_backup needs disk_backup_vms (which VMs, like ["db-*"])')
    return Schedule(tz_name, jobs, grace, tuple(vms))
