"""Fleet inventory and VM addressing: ``name``, ``host/name``, globs, by UUID inside.

Chat names a VM; the bot acts on host + UUID, so a VM undefined and defined
again under the same name is never mistaken for the one somebody approved.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import libvirt

from bot.hypervisor.pool import HostDown, Pool
from bot.hypervisor.states import State, state_of

GLOB_CHARS = set("*?[")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


@dataclass(frozen=True, slots=True)
class VmRef:
    host: str
    uuid: str
    name: str

    def __str__(self) -> str:
        return f"{self.host}/{self.name}"

    def audit_fields(self) -> dict[str, str]:
        """The audit columns that name a VM: host + UUID, and the name it had then."""
        return {"host": self.host, "vm_uuid": self.uuid, "vm_name": self.name}


@dataclass(frozen=True, slots=True)
class VmRow:
    ref: VmRef
    state: State
    autostart: bool
    vcpus: int = 0
    memory_kib: int = 0


@dataclass
class Inventory:
    rows: list[VmRow]
    down: dict[str, str]  # host -> why it did not answer
    _grouped: dict[str, list[VmRow]] | None = field(default=None, repr=False, compare=False)

    def on(self, host: str) -> list[VmRow]:
        return self.by_host().get(host, [])

    def by_host(self) -> dict[str, list[VmRow]]:
        """Rows grouped by host, built once: a thousand hosts must not mean a thousand scans."""
        if self._grouped is None:
            grouped: dict[str, list[VmRow]] = {}
            for r in self.rows:
                grouped.setdefault(r.ref.host, []).append(r)
            self._grouped = grouped
        return self._grouped


@dataclass
class Selection:
    rows: list[VmRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    globbed: bool = False
    note: str = ""  # how the targets were found, when the reply should say so (inventory missing or stale)

    @property
    def refs(self) -> list[VmRef]:
        return [r.ref for r in self.rows]


# State only: vCPU and balloon stats make QEMU answer a monitor query per running VM, and
# addressing needs none of it (previews fill sizes in with bot.preview.sized).
STATS = libvirt.VIR_DOMAIN_STATS_STATE


def _host_rows(host: str, conn: libvirt.virConnect) -> list[VmRow]:
    """Two round trips per host, whatever the number of VMs."""
    autostart = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)}
    rows = []
    for dom, stats in conn.getAllDomainStats(STATS):
        uuid = dom.UUIDString()
        rows.append(
            VmRow(
                VmRef(host, uuid, dom.name()),
                state_of(stats.get("state.state", 0), stats.get("state.reason", 0)),
                uuid in autostart,
                stats.get("vcpu.maximum", stats.get("vcpu.current", 0)),
                stats.get("balloon.maximum", 0),
            )
        )
    return sorted(rows, key=lambda r: r.ref.name)


@dataclass(frozen=True)
class Located:
    """Which hosts to ask for some patterns; ``hosts`` None means every host, and ``note`` says why."""

    hosts: list[str] | None
    note: str = ""


Locator = Callable[[list[str]], Located]


class Fleet:
    def __init__(self, pool: Pool, locate: Locator | None = None) -> None:
        """``locate`` names the hosts to ask for some patterns (the kept inventory), so a bare name opens one host."""
        self.pool, self.locate = pool, locate

    def inventory(self, hosts: list[str] | None = None) -> Inventory:
        """Every VM on the given hosts, asked in parallel; silent hosts are listed as down."""
        rows: list[VmRow] = []
        down: dict[str, str] = {}
        for host, answer in self.pool.fan_out(_host_rows, hosts).items():
            if isinstance(answer, Exception):
                down[host] = str(answer) if isinstance(answer, HostDown) else f"{host}: {answer}"
            else:
                rows.extend(answer)
        return Inventory(rows, down)

    def row(self, ref: VmRef) -> VmRow:
        """The VM's row now, looked up by UUID (raises libvirtError if it is gone)."""

        def fetch(conn: libvirt.virConnect) -> VmRow:
            dom = conn.lookupByUUIDString(ref.uuid)
            state, reason = dom.state()
            info = dom.info()
            return VmRow(
                VmRef(ref.host, ref.uuid, dom.name()), State(state, reason), bool(dom.autostart()), info[3], info[1]
            )

        return self.pool.call(ref.host, fetch)

    def resolve(self, patterns: list[str]) -> Selection:
        """Turn what the user typed into VMs, with a precise line for each miss."""
        hosts = sorted({p.split("/", 1)[0] for p in patterns if "/" in p} & set(self.pool.names))
        scoped_only = all("/" in p and p.split("/", 1)[0] in hosts for p in patterns)
        note = ""
        if not scoped_only and self.locate is not None:
            located = self.locate(patterns)
            if located.hosts is not None:
                sel = self._select(patterns, self.inventory(located.hosts))  # verified on those hosts, now
                if not sel.problems:
                    return sel
                note = "not where the inventory said: asked every host"
            else:
                note = located.note
        sel = self._select(patterns, self.inventory(hosts if scoped_only else None))
        sel.note = note
        return sel

    def _select(self, patterns: list[str], inv: Inventory) -> Selection:
        sel = Selection()
        for pattern in patterns:
            self._resolve_one(pattern, inv, sel)
        seen: set[tuple[str, str]] = set()
        sel.rows = [r for r in sel.rows if (k := (r.ref.host, r.ref.uuid)) not in seen and not seen.add(k)]
        return sel

    def _resolve_one(self, pattern: str, inv: Inventory, sel: Selection) -> None:
        host, name = self._split(pattern)
        if host is None and "/" in pattern and pattern.split("/", 1)[0] not in self.pool.names:
            bad = pattern.split("/", 1)[0]
            sel.problems.append(no_host(bad, self.pool.names))
            return
        if host in inv.down:  # "kvm01: unreachable since 10:02 UTC (why)", not a misleading "no VM named"
            sel.problems.append(inv.down[host])
            return
        scope = inv.on(host) if host else inv.rows
        hits, globbed = pick(name, scope)
        if not hits and UUID.match(name.lower()):
            where = f" on {host}" if host else ""
            sel.problems.append(f"no VM with UUID {name}{where} (undefined, or defined again with a new UUID)")
        elif len(hits) > 1 and not globbed:
            where = ", ".join(str(r.ref) for r in hits)
            sel.problems.append(f"'{name}' is on {len(hits)} hosts: {where}; name one as host/name")
        elif hits:
            sel.rows.extend(hits)
            sel.globbed = sel.globbed or globbed
        else:
            sel.problems.append(self._unknown(pattern, name, scope, inv, host))

    def _split(self, pattern: str) -> tuple[str | None, str]:
        head, sep, rest = pattern.partition("/")
        return (head, rest) if sep and head in self.pool.names else (None, pattern)

    def _unknown(self, pattern: str, name: str, scope: list[VmRow], inv: Inventory, host: str | None) -> str:
        if GLOB_CHARS & set(name):
            line = f"no VM matches '{pattern}'"
        else:
            line = f"no VM named '{name}'" + (f" on {host}" if host else "")
            close = difflib.get_close_matches(name, sorted({r.ref.name for r in scope}), n=3, cutoff=0.6)
            if close:
                line += f"; did you mean {', '.join(close)}?"
        down = [h for h in inv.down if host in (None, h)]
        if down:
            line += f" (not asked: {', '.join(inv.down[h] for h in down)})"
        return line


def pick(name: str, scope: list[VmRow]) -> tuple[list[VmRow], bool]:
    """What a name selects in a scope, and whether by glob: the exact name (or UUID) first, else fnmatch.

    The one matching rule: asking every host and the kept inventory's narrowing both
    use it, so the inventory can never pick other VMs than the hosts would.
    """
    exact = [r for r in scope if r.ref.name == name]
    if not exact and UUID.match(name.lower()):
        return [r for r in scope if r.ref.uuid == name.lower()], False
    if exact or not GLOB_CHARS & set(name):
        return exact, False
    return [r for r in scope if fnmatch.fnmatchcase(r.ref.name, name)], True


def literal_prefix(name: str) -> str:
    """The part of a name before its first glob character: every VM it can select starts with it."""
    return re.split(r"[*?\[]", name, maxsplit=1)[0]


def no_host(name: str, hosts: list[str]) -> str:
    """The one line for a host name that is not in the config, with the ones that are."""
    return f"no host named '{name}'; hosts: {', '.join(hosts)}"
