"""The daily status digest: what needs attention first, then one summary line per host.

Built from one Facts snapshot plus what the bot itself knows (state history,
pending approvals, freezes, open incidents, autostart and backup health), cut
to a Scope. Pure data work: a 10,000-VM fleet must build in well under a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from bot.hypervisor.fleet import VmRow
from bot.reply import state_word
from bot.reports.facts import Facts, HostFacts
from bot.reports.model import AMBER, INFO, RED, Item, Report, Section, gib
from bot.reports.scope import Scope

PAUSED_TOO_LONG = timedelta(days=1)


def state_key(row: VmRow) -> str:
    return "crashed" if row.state.crashed else row.state.name


def vm_items(facts: Facts, changed: dict[tuple[str, str], datetime], now: datetime, scope: Scope) -> list[Item]:
    """Crashed VMs (red) and VMs paused for more than a day or since before the bot watched (amber)."""
    out = []
    for r in facts.rows:
        crashed, paused = r.state.crashed, r.state.name == "paused"
        if not (crashed or paused) or not scope.vm(r.ref.host, r.ref.name, r.ref.uuid):
            continue
        where = f"{r.ref.host}/{r.ref.name}"
        if crashed:
            out.append(Item(RED, f"{where} is {state_word(r)}", r.ref.host, r.ref.name, r.ref.uuid))
            continue
        since = changed.get((r.ref.host, r.ref.uuid))
        if since is None:
            out.append(Item(AMBER, f"{where} is paused (since before the bot was watching)", *_vm(r)))
        elif now - since > PAUSED_TOO_LONG:
            days = (now - since).total_seconds() / 86400
            out.append(Item(AMBER, f"{where} has been paused for {days:.1f} days", *_vm(r)))
    return out


def _vm(r: VmRow) -> tuple[str, str, str]:
    return r.ref.host, r.ref.name, r.ref.uuid


def host_section(h: HostFacts, rows: list[VmRow], scope: Scope) -> Section | None:
    """One line per host: reachable, versions, memory, pools, counts by state (as far as the scope sees)."""
    mine = [r for r in rows if scope.vm(r.ref.host, r.ref.name, r.ref.uuid)]
    whole = scope.host(h.name)
    if not whole and not mine:
        return None
    if h.down:
        return Section(h.name, f"DOWN: {h.down}", host=h.name)
    counts = Counter(state_key(r) for r in mine)
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no VMs"
    if not whole:
        return Section(h.name, f"up · your VMs: {states}", host=h.name)
    pools = "; ".join(
        f"{p.name} {gib(p.available)} free of {gib(p.capacity)}" if p.active else f"{p.name} inactive" for p in h.pools
    )
    parts = [
        "up",
        f"libvirt {h.libvirt}",
        h.hypervisor,
        f"memory {h.memory_text()}",
        f"pools: {pools or 'none'}",
        states,
    ]
    return Section(h.name, " · ".join(parts), host=h.name)


def build(
    facts: Facts,
    scope: Scope,
    changed: dict[tuple[str, str], datetime],
    extra: Iterable[Item] = (),
    now: datetime | None = None,
) -> Report:
    """The status report for ``scope``; ``extra`` are the bot's own items (approvals, freezes, health)."""
    now = now or facts.at
    attention: list[Item] = []
    for h in facts.hosts.values():
        if h.down and scope.host(h.name):
            attention.append(Item(RED, f"host {h.down}", h.name))
    attention += vm_items(facts, changed, now, scope)
    by_host: dict[str, list[VmRow]] = {}
    for r in facts.rows:
        by_host.setdefault(r.ref.host, []).append(r)
    sections = [s for h in facts.hosts.values() if (s := host_section(h, by_host.get(h.name, []), scope))]
    shown = {s.host for s in sections}
    attention += [i for i in extra if _visible(i, scope, shown)]
    seen = [r for r in facts.rows if scope.vm(r.ref.host, r.ref.name, r.ref.uuid)]
    counts = Counter(state_key(r) for r in seen)
    up = sum(1 for s in sections if not s.summary.startswith("DOWN"))
    summary = [
        f"{len(sections)} host(s), {up} answering; {len(seen)} VM(s): "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
    ]
    if facts.source:  # the kept inventory (resynced when), or why every host was asked
        summary.append(f"(VMs {facts.source})" if facts.source.startswith("from") else f"({facts.source})")
    report = Report("status", "Fleet status", now, summary, attention, sections, scope.who)
    return report.sort()


def _visible(item: Item, scope: Scope, shown: set[str]) -> bool:
    """A VM's line needs that VM; a host's line (a host freeze) a host the reader sees something of.

    Bot-wide lines (a fleet freeze) are for anyone who sees some part of the fleet; a reader the
    grants show nothing learns nothing, not even that there is a fleet to freeze.
    """
    if item.vm:
        return scope.vm(item.host, item.vm, item.uuid)
    if item.host:
        return scope.host(item.host) or (bool(scope.who) and item.level == INFO and item.host in shown)
    return not scope.who or (item.level == INFO and bool(shown))
