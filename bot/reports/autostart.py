"""Autostart health: what will not come back by itself after a host reboot, and what did not.

- autostart on but not running (red when the host came back recently and the
  VM did not come back with it, from the host incidents the alerts recorded);
- running VMs the config expects to autostart (``[autostart] expect`` globs) whose flag is off;
- autostart flags changed since the VM's last config backup (when a catalog exists).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from datetime import datetime

from bot import times
from bot.reports.backups import BackupCatalog, at_or_none
from bot.reports.facts import Facts
from bot.reports.model import AMBER, INFO, RED, Item, Report
from bot.reports.scope import Scope


def expected(globs: Sequence[str], host: str, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(f"{host}/{name}", g) for g in globs)


def items(
    facts: Facts,
    scope: Scope,
    expect: Sequence[str] = (),
    returned: dict[str, datetime] | None = None,
    catalog: BackupCatalog | None = None,
) -> list[Item]:
    """``returned``: hosts that came back after being away, and when (from the alert incidents)."""
    returned = returned or {}
    flags_then: dict[tuple[str, str], tuple[datetime, bool]] = {}
    if catalog is not None:
        for r in catalog.entries():
            at = at_or_none(r.created_at)
            key = (r.host, r.vm_uuid)
            if r.kind == "config" and at and (key not in flags_then or at > flags_then[key][0]):
                flags_then[key] = (at, bool(r.autostart))
    out = []
    for row in facts.rows:
        ref = row.ref
        if not scope.vm(ref.host, ref.name, ref.uuid):
            continue
        where, vm = f"{ref.host}/{ref.name}", (ref.host, ref.name, ref.uuid)
        if row.autostart and not row.state.active:
            if ref.host in returned:
                back = times.minute(returned[ref.host])
                out.append(
                    Item(
                        RED, f"{where} has autostart on but did not come back after {ref.host} returned at {back}", *vm
                    )
                )
            else:
                out.append(Item(AMBER, f"{where} has autostart on but is {row.state.name}", *vm))
        if row.state.active and not row.autostart and expected(expect, ref.host, ref.name):
            out.append(Item(AMBER, f"{where} is running and expected to autostart, but autostart is off", *vm))
        then = flags_then.get((ref.host, ref.uuid))
        if then and then[1] != row.autostart:
            was = "on" if then[1] else "off"
            out.append(
                Item(
                    AMBER,
                    f"{where} autostart is {'on' if row.autostart else 'off'}; it was {was} at the last config backup",
                    *vm,
                )
            )
    return out


def report(
    facts: Facts,
    scope: Scope,
    now: datetime,
    expect: Sequence[str] = (),
    returned: dict[str, datetime] | None = None,
    catalog: BackupCatalog | None = None,
) -> Report:
    found = items(facts, scope, expect, returned, catalog)
    seen = [r for r in facts.rows if scope.vm(r.ref.host, r.ref.name, r.ref.uuid)]
    on = sum(1 for r in seen if r.autostart)
    rep = Report("autostart", "Autostart health", now, [f"{len(seen)} VM(s), {on} with autostart on"], found)
    rep.scope = scope.who
    if catalog is None:
        rep.summary.append("no backup catalog: flag changes since the last config backup cannot be checked")
    down = [h.name for h in facts.hosts.values() if h.down and scope.host(h.name)]
    if down:
        rep.attention.append(Item(INFO, f"not asked (did not answer): {', '.join(down)}"))
    return rep.sort()
