"""Backup health: per VM, the age of its latest config and disk backup against the schedule, the last
verify and recent failures; green, amber, red, worst first.

Built against a small catalog interface (a Protocol) rather than the backup
code itself, which is being written beside this: any catalog whose
``entries()`` yields records with these fields will do. With no catalog the
report says so instead of calling every VM unprotected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from bot.reports.facts import Facts
from bot.reports.model import AMBER, GREEN, INFO, RED, Item, Report, Section
from bot.reports.scope import Scope
from bot.schedule.cron import trigger
from bot.schedule.settings import Schedule

RECENT = timedelta(days=7)


class BackupRecord(Protocol):
    kind: str  # "config" or "disk"
    host: str
    vm_uuid: str
    vm_name: str
    created_at: str  # ISO 8601, UTC
    status: str  # "good" or anything else (a failure)
    autostart: bool
    verified_at: str
    verify_result: str


class BackupCatalog(Protocol):
    def entries(
        self, name: str | None = None, uuid: str | None = None, host: str | None = None
    ) -> Sequence[BackupRecord]: ...


def _at(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def at_or_none(text: str) -> datetime | None:
    """A catalog time, or None when it cannot be read (a hand-edited row must not break a report)."""
    try:
        return _at(text)
    except (ValueError, AttributeError):
        return None


def period(expr: str | None) -> timedelta | None:
    """How often a cron expression fires (the gap after its next fire), None when not scheduled."""
    if not expr:
        return None
    t = trigger(expr, UTC)
    first = t.get_next_fire_time(None, datetime(2026, 1, 5, tzinfo=UTC))
    second = t.get_next_fire_time(None, first + timedelta(seconds=1)) if first else None
    return (second - first) if first and second else None


def wants_disk(schedule: Schedule, host: str, name: str) -> bool:
    return any(
        fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(f"{host}/{name}", g) for g in schedule.disk_backup_vms
    )


def vm_health(
    records: Sequence[BackupRecord], schedule: Schedule, host: str, name: str, now: datetime
) -> tuple[str, list[str]]:
    """The VM's colour and the reasons, from its own records."""
    worst, why = GREEN, []
    kinds = [("config", period(schedule.jobs.get("config_backup")), True)]
    kinds.append(("disk", period(schedule.jobs.get("disk_backup")), wants_disk(schedule, host, name)))
    for kind, every, expected in kinds:
        if not expected:
            continue
        good = [r for r in records if r.kind == kind and r.status == "good"]
        latest = max((_at(r.created_at) for r in good), default=None)
        if latest is None:
            worst, why = _worse(worst, RED), [*why, f"no good {kind} backup"]
            continue
        age = now - latest
        limit = every or timedelta(days=1)
        if age > 2 * limit + timedelta(hours=1):
            worst, why = _worse(worst, RED), [*why, f"{kind} backup is {_age(age)} old (due every {_age(limit)})"]
        elif age > limit + timedelta(hours=1):
            worst, why = _worse(worst, AMBER), [*why, f"{kind} backup overdue: {_age(age)} old"]
    verified = [r for r in records if r.verified_at]
    if verified:
        last = max(verified, key=lambda r: _at(r.verified_at))
        if last.verify_result and not last.verify_result.startswith("ok"):
            worst, why = _worse(worst, RED), [*why, f"last verify failed: {last.verify_result}"]
    elif records:
        worst, why = _worse(worst, AMBER), [*why, "never verified"]
    failed = [r for r in records if r.status != "good" and now - _at(r.created_at) <= RECENT]
    if failed:
        worst, why = _worse(worst, AMBER), [*why, f"{len(failed)} failed backup(s) in the last 7 days"]
    return worst, why


def _worse(a: str, b: str) -> str:
    order = [GREEN, AMBER, RED]
    return b if order.index(b) > order.index(a) else a


def _age(d: timedelta) -> str:
    hours = d.total_seconds() / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.1f} days"


def items(catalog: BackupCatalog | None, facts: Facts, schedule: Schedule, scope: Scope, now: datetime) -> list[Item]:
    """Red and amber VMs as attention items (the digest); nothing when there is no catalog."""
    if catalog is None:
        return []
    by_vm: dict[tuple[str, str], list[BackupRecord]] = {}
    for r in catalog.entries():
        by_vm.setdefault((r.host, r.vm_uuid), []).append(r)
    out = []
    for row in facts.rows:
        ref = row.ref
        if not scope.vm(ref.host, ref.name, ref.uuid):
            continue
        level, why = vm_health(by_vm.get((ref.host, ref.uuid), []), schedule, ref.host, ref.name, now)
        if level != GREEN:
            out.append(Item(level, f"{ref.host}/{ref.name} backups: {'; '.join(why)}", ref.host, ref.name, ref.uuid))
    return out


def report(catalog: BackupCatalog | None, facts: Facts, schedule: Schedule, scope: Scope, now: datetime) -> Report:
    """The backup health report: worst first; says plainly when there is no catalog to read."""
    rep = Report("backups", "Backup health", now, scope=scope.who)
    if catalog is None:
        rep.attention.append(Item(INFO, "no backup catalog: backups are not set up in this bot, so none can be judged"))
        return rep
    found = items(catalog, facts, schedule, scope, now)
    seen = sum(1 for r in facts.rows if scope.vm(r.ref.host, r.ref.name, r.ref.uuid))
    rep.attention = found
    rep.summary = [f"{seen} VM(s): {seen - len(found)} green, {len(found)} need attention"]
    down = [h.name for h in facts.hosts.values() if h.down and scope.host(h.name)]
    if down:
        rep.sections.append(Section("not asked", f"hosts that did not answer: {', '.join(down)}"))
    return rep.sort()
