"""What every report reads from the fleet, gathered once: hosts (versions, memory, pools) and VMs.

The VMs come from the inventory the bot keeps when someone keeps it (a thousand
hosts' domain lists are not asked again for a digest); only what it does not
hold (versions, memory, pools) is asked of the hosts. Without a kept inventory,
or for a host missing from it, the hosts are asked, and the facts say so. Each
fan-out is one shared deadline for all hosts, so a dead host costs the digest one
timeout, not one per question. The snapshot is kept with the latest digest so
App Home can cut it to each viewer without asking libvirt again.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime

import libvirt

from bot.hypervisor.fleet import Fleet, VmRow
from bot.hypervisor.inventory import Snapshot
from bot.hypervisor.pool import HostDown


@dataclass(frozen=True)
class PoolFacts:
    name: str
    active: bool
    capacity: int
    available: int
    source: str = ""  # the <source> (host/dir/device/name) that says whether two hosts share it


@dataclass(frozen=True)
class HostFacts:
    name: str
    down: str = ""  # why it did not answer; "" when it did
    libvirt: str = ""
    hypervisor: str = ""
    free_memory: int = 0  # bytes
    total_memory: int = 0  # bytes
    pools: tuple[PoolFacts, ...] = ()
    memory_estimated: bool = False  # the driver gave no free-memory figure: total minus running VMs

    def memory_text(self) -> str:
        est = " (estimated: total minus running VMs)" if self.memory_estimated else ""
        return f"{self.free_memory / (1 << 30):.1f} GiB free of {self.total_memory / (1 << 30):.1f} GiB{est}"


@dataclass
class Facts:
    at: datetime
    hosts: dict[str, HostFacts]
    rows: list[VmRow] = field(default_factory=list)
    source: str = ""  # where the VMs came from, when a reader should know (the kept inventory, or why not)

    def on(self, host: str) -> list[VmRow]:
        return [r for r in self.rows if r.ref.host == host]


def version(v: int) -> str:
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}" if v else "?"


def pool_source(xml: str) -> str:
    """The pool's <source> as one comparable string (empty for a plain local directory)."""
    try:
        src = ET.fromstring(xml).find("source")
    except ET.ParseError:
        return ""
    if src is None:
        return ""
    parts = []
    for el in src.iter():
        if el is src:
            continue
        attrs = ",".join(f"{k}={v}" for k, v in sorted(el.attrib.items()))
        parts.append(f"{el.tag}[{attrs}]{(el.text or '').strip()}")
    return ";".join(sorted(parts))


def host_facts(host: str, conn: libvirt.virConnect) -> HostFacts:
    """One host's versions, memory and pools (runs on the host's pool worker)."""
    try:
        hv = version(conn.getVersion())
    except libvirt.libvirtError:
        hv = "?"
    pools = []
    for p in conn.listAllStoragePools():
        active = bool(p.isActive())
        _state, capacity, _alloc, available = p.info() if active else (0, 0, 0, 0)
        pools.append(PoolFacts(p.name(), active, capacity, available, pool_source(p.XMLDesc(0))))
    total, free = conn.getInfo()[1] << 20, conn.getFreeMemory()
    estimated = free == 0  # libvirt's test driver with a custom node file reports no NUMA cells
    if estimated:
        used = sum(d.info()[1] for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)) * 1024
        free = max(0, total - used)
    return HostFacts(
        host,
        libvirt=version(conn.getLibVersion()),
        hypervisor=f"{conn.getType()} {hv}",
        free_memory=free,
        total_memory=total,
        pools=tuple(sorted(pools, key=lambda x: x.name)),
        memory_estimated=estimated,
    )


def gather(fleet: Fleet, hosts: list[str] | None = None, kept: Snapshot | None = None, why: str = "") -> Facts:
    """Everything the status digest needs, for the given hosts (default all).

    ``kept``: the inventory the bot keeps; its rows are the VMs of every host that answers now,
    and only a host it has no rows for (it did not answer the last resync) is asked its VMs.
    Without it every host is asked, and ``why`` (no inventory is kept, or it is stale) is said.
    """
    names = hosts if hosts is not None else fleet.pool.names
    answers = fleet.pool.fan_out(host_facts, names)
    found: dict[str, HostFacts] = {}
    for name in names:
        a = answers[name]
        if isinstance(a, HostFacts):
            found[name] = a
        else:
            found[name] = HostFacts(name, down=str(a) if isinstance(a, HostDown) else f"{name}: {a}")
    up = [n for n in names if not found[n].down]
    rows: list[VmRow] = []
    if kept is not None:
        answered = set(up)
        rows = [r for r in kept.inventory.rows if r.ref.host in answered and r.ref.host not in kept.inventory.down]
        up = [n for n in up if n in kept.inventory.down]  # not in the inventory: ask them now
    inv = fleet.inventory(up) if up else None
    if inv:
        for name, down in inv.down.items():
            found[name] = HostFacts(name, down=down)
        rows += inv.rows
    source = kept.note() if kept is not None else why
    return Facts(datetime.now(UTC), found, rows, source)
