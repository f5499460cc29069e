"""Read-only answers: list, state, info, ip, dumpxml, hosts, audit."""

from __future__ import annotations

from collections.abc import Callable

import libvirt

from bot import times
from bot.commands import Command
from bot.hypervisor.fleet import Fleet, Inventory, VmRow, no_host
from bot.hypervisor.pool import HostDown
from bot.hypervisor.states import STATE_CODES, applicable
from bot.hypervisor.transport import transport
from bot.reply import Card, Listing, Reply, Status
from bot.store.audit import Audit

CARD_ACTIONS = ["start", "shutdown", "reboot", "suspend", "resume", "reset", "destroy"]
STATE_WORDS = STATE_CODES | {"shutoff": 5, "off": 5, "idle": 2}


def listing(
    fleet: Fleet,
    cmd: Command,
    kept: Inventory | None = None,
    note: str = "",
    may: Callable[[VmRow], bool] = lambda _r: True,
) -> Reply:
    """``virsh list``: running VMs unless --all, filtered by host, state and autostart.

    ``kept`` is the inventory the bot keeps, when someone keeps it; else the hosts are asked now.
    ``may`` says whether the requester may list a VM (policy per VM, as for ``state``): the
    others, and hosts where none is visible, are left out of every count, line and file.
    """
    host, state = cmd.flag("host"), cmd.flag("state")
    if host and host not in fleet.pool.names:
        return Reply(Status.USAGE, no_host(str(host), fleet.pool.names))
    if state and str(state).lower() not in STATE_WORDS and state != "crashed":
        words = "running, paused, shut off, crashed"
        return Reply(Status.USAGE, f"unknown state '{state}'; states: {words}")
    inv = kept if kept is not None else fleet.inventory([host] if host else None)
    grouped = inv.by_host()
    hosts = {}
    for h in [host] if host else fleet.pool.names:
        mine = [r for r in grouped.get(h, []) if may(r)]
        if h not in inv.down and (mine or not grouped.get(h)):
            hosts[h] = [r for r in mine if _keep(r, cmd)]
    total = sum(len(v) for v in hosts.values())
    what = "" if cmd.flag("all") or cmd.flag("autostart") or state else "running "
    headline = f"{total} {what}VM{'' if total == 1 else 's'} on {len(hosts)} host(s)"
    if inv.down:
        headline += f"; {len(inv.down)} host(s) did not answer"
    status = Status.FAILED if inv.down and not hosts else Status.OK  # no host answered: nothing was listed
    return Reply(status, headline, listing=Listing(hosts, inv.down), note=note)


def _keep(row: VmRow, cmd: Command) -> bool:
    if cmd.flag("autostart") and not row.autostart:
        return False
    if state := cmd.flag("state"):
        word = str(state).lower()
        return row.state.crashed if word == "crashed" else row.state.code == STATE_WORDS[word]
    return bool(cmd.flag("all") or cmd.flag("autostart")) or row.state.active


def state(fleet: Fleet, row: VmRow, since: str = "") -> Reply:
    """``since`` is the state log's " since 10:02:13 UTC" (empty when no change was seen)."""
    return Reply(Status.OK, f"{row.ref.name} on {row.ref.host}: {row.state}{since}")


def info(fleet: Fleet, row: VmRow) -> Reply:
    """What ``virsh dominfo`` shows, plus the actions that apply to the current state."""

    def read(conn: libvirt.virConnect) -> list[tuple[str, str]]:
        dom = conn.lookupByUUIDString(row.ref.uuid)
        _st, maxmem, mem, vcpus, cputime = dom.info()
        dom_id = dom.ID()
        return [
            ("Id", str(dom_id) if dom_id >= 0 else "-"),
            ("Name", dom.name()),
            ("UUID", dom.UUIDString()),
            ("Host", row.ref.host),
            ("OS Type", dom.OSType()),
            ("State", str(row.state)),
            ("CPU(s)", str(vcpus)),
            ("CPU time", f"{cputime / 1e9:.1f}s"),
            ("Max memory", f"{maxmem} KiB"),
            ("Used memory", f"{mem} KiB"),
            ("Persistent", "yes" if dom.isPersistent() else "no"),
            ("Autostart", "enable" if dom.autostart() else "disable"),
            ("Managed save", "yes" if dom.hasManagedSaveImage(0) else "no"),
        ]

    fields = fleet.pool.call(row.ref.host, read)
    card = Card(row.ref, fields, applicable(row.state, CARD_ACTIONS))
    return Reply(Status.OK, f"{row.ref.name} on {row.ref.host}", card=card)


def ip(fleet: Fleet, row: VmRow) -> Reply:
    """``virsh domifaddr``: leases first, then the guest agent, then ARP."""
    sources = (
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    )

    def read(conn: libvirt.virConnect) -> dict:
        dom = conn.lookupByUUIDString(row.ref.uuid)
        for source in sources:
            try:
                if found := dom.interfaceAddresses(source):
                    return found
            except libvirt.libvirtError:
                continue
        return {}

    found = fleet.pool.call(row.ref.host, read)
    lines = [
        f"{dev:<10} {nic.get('hwaddr', '-'):<18} {'ipv6' if a['type'] else 'ipv4'} {a['addr']}/{a['prefix']}"
        for dev, nic in sorted(found.items())
        for a in nic.get("addrs") or []
    ]
    head = f"{row.ref.name} on {row.ref.host}: " + (
        "addresses" if lines else "no address known (no DHCP lease, agent or ARP entry)"
    )
    return Reply(Status.OK, head, lines)


def dumpxml(fleet: Fleet, row: VmRow) -> Reply:
    xml = fleet.pool.call(row.ref.host, lambda c: c.lookupByUUIDString(row.ref.uuid).XMLDesc(0))
    return Reply(Status.OK, f"{row.ref.name} on {row.ref.host}", code=xml)


def hosts(fleet: Fleet) -> Reply:
    """Each host: its transport (ssh, libssh, tls, tcp, local unix, test), then up with its size, or why not."""

    def ask(_host: str, conn: libvirt.virConnect) -> str:
        _model, mem_mib, cpus = conn.getInfo()[:3]
        return f"up, libvirt {_version(conn.getLibVersion())}, {cpus} CPUs, {mem_mib // 1024} GiB"

    lines = []
    for host, answer in fleet.pool.fan_out(ask).items():
        name = f"{host} ({transport(fleet.pool.uri(host))})"
        if isinstance(answer, HostDown):
            lines.append(f"{name}: {str(answer).removeprefix(f'{host}: ')}")  # "unreachable since 10:02 UTC (why)"
        else:
            lines.append(f"{name}: {answer}" if isinstance(answer, str) else f"{name}: down ({answer})")
    return Reply(Status.OK, f"{len(lines)} host(s)", lines)


def _version(v: int) -> str:
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def audit(store: Audit, cmd: Command, hosts: list[str]) -> Reply:
    vm = cmd.targets[0] if cmd.targets else None
    host = None
    if vm and "/" in vm and vm.split("/", 1)[0] in hosts:
        host, vm = vm.split("/", 1)
    rows = store.latest(vm, host)
    lines = [
        f"#{r['id']} {times.full(r['started_at'])} {r['slack_user']}"
        + (f" ({r['unix_user']})" if r["unix_user"] else "")
        + f" {r['action']} {r['host'] + '/' + r['vm_name'] if r['vm_name'] else ''}"
        + f" → {r['result'] or ('waiting for approval' if r['decision'] == 'needs approval' else 'running')}"
        + (f": {r['detail']}" if r["detail"] else "")
        for r in rows
    ]
    head = f"latest {len(rows)} audit row(s)" + (f" for {vm}" if vm else "")
    return Reply(Status.OK, head, lines)
