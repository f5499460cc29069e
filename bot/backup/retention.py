"""Which backups to keep: Proxmox's prune semantics, per VM and kind, and never the newest good one.

Rules run in order (keep_last, keep_daily, keep_weekly, keep_monthly). Each
rule walks the backups newest first and keeps the newest backup of each period
(day, ISO week, month) until it has kept ``keep_X`` periods; a period that
already holds a backup kept by an earlier rule is skipped, not counted; a
backup the rule passes over in a period it has already used is gone for the
later rules too. What no rule keeps is removed. With every rule at 0 nothing
is removed (Proxmox's keep-all). Periods are UTC calendar days, ISO weeks and
months. Bad backups (failed verify) are never counted as kept and are removed,
but the newest good backup of each VM stays whatever the rules say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from bot.backup.catalog import Entry

RULES: list[tuple[str, Callable[[datetime], str]]] = [
    ("keep_last", lambda t: t.isoformat()),  # every backup is its own period
    ("keep_daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("keep_monthly", lambda t: t.strftime("%Y-%m")),
]
KEEP, REMOVE = "keep", "remove"


@dataclass(frozen=True)
class Item:
    id: str
    when: datetime


def marks(items: Iterable[Item], keep: dict[str, int]) -> dict[str, str]:
    """id -> keep | remove for one VM's backups (any order in; newest first inside)."""
    ordered = sorted(items, key=lambda i: (i.when, i.id), reverse=True)
    if not any(keep.get(rule, 0) for rule, _ in RULES):
        return {i.id: KEEP for i in ordered}
    mark: dict[str, str] = {}
    for rule, period in RULES:
        _apply(ordered, mark, keep.get(rule, 0), period)
    return {i.id: mark.get(i.id, REMOVE) for i in ordered}


def _apply(ordered: list[Item], mark: dict[str, str], limit: int, period: Callable[[datetime], str]) -> None:
    already = {period(i.when) for i in ordered if mark.get(i.id) == KEEP}
    chosen: set[str] = set()
    for item in ordered:
        if item.id in mark:
            continue
        p = period(item.when)
        if p in already:
            continue
        if p in chosen:
            mark[item.id] = REMOVE
            continue
        if len(chosen) >= limit:
            break
        chosen.add(p)
        mark[item.id] = KEEP


def when(entry: Entry) -> datetime:
    return datetime.fromisoformat(entry.created_at)


def plan(entries: list[Entry], keep: dict[str, int]) -> tuple[list[Entry], list[Entry]]:
    """(kept, removed) over the whole catalog, grouped by VM (host + UUID) and kind."""
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((e.host, e.vm_uuid, e.kind), []).append(e)
    kept, removed = [], []
    for group in groups.values():
        good = [e for e in group if e.good]
        verdict = marks((Item(e.id, when(e)) for e in good), keep)
        if good:
            newest = max(good, key=lambda e: (when(e), e.id))
            verdict[newest.id] = KEEP  # the newest good backup is never deleted
        for e in group:
            (kept if verdict.get(e.id) == KEEP else removed).append(e)
    return _with_ancestors(entries, kept)


def _with_ancestors(entries: list[Entry], kept: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """An incremental backup is useless without the backups it builds on: those stay while it stays."""
    by_id = {e.id: e for e in entries}
    keep = {e.id for e in kept}
    for e in kept:
        parent = e.parent
        while parent and parent in by_id and parent not in keep:
            keep.add(parent)
            parent = by_id[parent].parent
    return [e for e in entries if e.id in keep], [e for e in entries if e.id not in keep]
