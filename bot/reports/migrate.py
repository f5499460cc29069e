"""``migrate-check VM HOST``: the checklist operators run by hand before moving a VM, each line pass,
warn or fail with its reason. Nothing is changed; the migration itself is a later step.

Storage counts as shared only when both hosts have a pool naming the same
non-empty ``<source>``; the same path on two local disks is two different
disks, and migrating without copying would run a stale one.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from bot.hypervisor.errors import error_text
from bot.hypervisor.fleet import VmRef
from bot.hypervisor.pool import HostDown, Pool
from bot.reports.facts import HostFacts, host_facts, pool_source
from bot.reports.model import AMBER, GREEN, RED, Item, gib

PASS, WARN, FAIL = GREEN, AMBER, RED
WORD = {PASS: "pass", WARN: "warn", FAIL: "fail"}
Check = Item


@dataclass(frozen=True)
class VmFacts:
    memory: int  # bytes
    state: int
    disks: list[tuple[str, int]]  # (path, capacity bytes)
    cpu: str  # the <cpu> element, "" when the VM pins none
    snapshots: int
    cpu_mode: str = ""  # <cpu mode=...>: host-passthrough / maximum give the guest this host's own CPU


def vm_facts(uuid: str) -> Callable[[libvirt.virConnect], VmFacts]:
    def read(conn: libvirt.virConnect) -> VmFacts:
        dom = conn.lookupByUUIDString(uuid)
        root = ET.fromstring(dom.XMLDesc(0))
        disks = [d for src in root.findall("./devices/disk[@device='disk']/source") if (d := disk(conn, src))]
        cpu = root.find("cpu")
        cpu_xml = ET.tostring(cpu, encoding="unicode") if cpu is not None and cpu.find("model") is not None else ""
        mode = cpu.get("mode", "") if cpu is not None else ""
        return VmFacts(dom.maxMemory() * 1024, dom.state()[0], disks, cpu_xml, dom.snapshotNum(0), mode)

    return read


def disk(conn: libvirt.virConnect, src: ET.Element) -> tuple[str, int] | None:
    """(path, capacity) of a disk's ``<source>``: a file, a block device, or a pool volume (pool + volume)."""
    if src.get("pool") and src.get("volume"):
        try:
            vol = conn.storagePoolLookupByName(src.get("pool")).storageVolLookupByName(src.get("volume"))
            return vol.path(), vol.info()[1]
        except libvirt.libvirtError:  # a volume that is gone: named, size unknown
            return f"{src.get('pool')}/{src.get('volume')}", 0
    path = src.get("file") or src.get("dev") or ""
    if not path:
        return None
    try:
        return path, conn.storageVolLookupByPath(path).info()[1]
    except libvirt.libvirtError:
        return path, 0


def pools_with_paths(conn: libvirt.virConnect) -> list[tuple[str, str, str, int, set[str]]]:
    """(name, target path, source, available bytes, volume paths) for each active pool."""
    out = []
    for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        xml = p.XMLDesc(0)
        target = ET.fromstring(xml).findtext("./target/path") or ""
        vols = {v.path() for v in p.listAllVolumes()}
        out.append((p.name(), target, pool_source(xml), p.info()[3], vols))
    return out


def line(level: str, what: str, why: str) -> Check:
    return Item(level, f"{WORD[level]}: {what}: {why}")


def check_versions(src: HostFacts, dst: HostFacts) -> list[Check]:
    out = []
    for what, a, b in (("libvirt", src.libvirt, dst.libvirt), ("hypervisor", src.hypervisor, dst.hypervisor)):
        older = _v(b) < _v(a)
        level = WARN if older else PASS
        why = f"{a} here, {b} there" + (" (older: the target may not run what this side defined)" if older else "")
        out.append(line(level, f"{what} version", why))
    return out


def _v(text: str) -> tuple[int, ...]:
    nums = [p for p in text.split()[-1].split(".") if p.isdigit()]
    return tuple(int(p) for p in nums)


def check_memory(vm: VmFacts, dst: HostFacts) -> Check:
    need, has = vm.memory, f"the target has {dst.memory_text()}"
    if dst.free_memory < need:
        return line(FAIL, "memory", f"the VM needs {gib(need)}, {has}")
    if dst.free_memory - need < dst.total_memory * 0.1:
        return line(WARN, "memory", f"the VM needs {gib(need)}, {has}: under 10% of the host would be left")
    return line(PASS, "memory", f"the VM needs {gib(need)}, {has}")


def check_storage(vm: VmFacts, src_pools: list, dst_pools: list) -> list[Check]:
    """Per disk: shared (same non-empty pool source on both), or a copy that fits, never a stale same path."""
    out, need = [], 0
    shared_sources = {p[2] for p in dst_pools if p[2]}
    dst_paths = {v for p in dst_pools for v in p[4]}
    for path, size in vm.disks:
        pool = next((p for p in src_pools if path in p[4] or (p[1] and path.startswith(p[1].rstrip("/") + "/"))), None)
        if pool and pool[2] and pool[2] in shared_sources:
            out.append(line(PASS, f"disk {path}", f"shared storage: pool {pool[0]} has the same source on both hosts"))
        elif path in dst_paths:
            why = "the target has a file at the same path on storage that is not shared: migrating without a copy "
            out.append(line(FAIL, f"disk {path}", why + "would run a stale disk"))
        elif size:
            need += size
        else:
            out.append(line(WARN, f"disk {path}", "not a volume of any pool here, so its size (the copy) is unknown"))
    if need:
        best = max(dst_pools, key=lambda p: p[3], default=None)
        if best is None or best[3] < need:
            free = gib(best[3]) if best else "no pool"
            out.append(
                line(FAIL, "storage", f"copying the disks needs {gib(need)}; the target's largest pool has {free}")
            )
        else:
            out.append(
                line(PASS, "storage", f"copying the disks needs {gib(need)}; pool {best[0]} has {gib(best[3])} free")
            )
    if not vm.disks:
        out.append(line(PASS, "storage", "the VM has no disks to move"))
    return out


def host_cpu(conn: libvirt.virConnect) -> str:
    """The host's own ``<cpu>`` from its capabilities (what a host-passthrough guest sees)."""
    cpu = ET.fromstring(conn.getCapabilities()).find("./host/cpu")
    return ET.tostring(cpu, encoding="unicode") if cpu is not None else ""


def cpu_model(xml: str) -> str:
    return (ET.fromstring(xml).findtext("model") or "?") if xml else "?"


def check_passthrough(pool: Pool, source: str, target: str, vm: VmFacts) -> Check:
    """host-passthrough hands the guest the source host's exact CPU: the target needs the same one."""
    what = f"{vm.cpu_mode}: the guest sees {source}'s own CPU, so the target needs the same CPU model"
    try:
        mine = pool.call(source, host_cpu)
        theirs = pool.call(target, host_cpu)
        if cpu_model(mine) != cpu_model(theirs):
            return line(FAIL, "CPU", f"{what}; {source} has {cpu_model(mine)}, {target} has {cpu_model(theirs)}")
        result = pool.call(target, lambda c: c.compareCPU(mine, 0))  # host CPU against host CPU
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return line(WARN, "CPU", f"{what}; cannot tell: the target's libvirt driver does not compare CPUs")
        return line(WARN, "CPU", f"{what}; cannot tell: {(e.get_error_message() or str(e)).strip()}")
    if result == libvirt.VIR_CPU_COMPARE_IDENTICAL:
        return line(PASS, "CPU", f"{vm.cpu_mode}: the target's CPU is the same as {source}'s")
    if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return line(FAIL, "CPU", f"{what}; the target's CPU lacks features of {source}'s")
    return line(WARN, "CPU", f"{what}; the target's CPU has more features: the guest may see them change")


def check_cpu(pool: Pool, target: str, vm: VmFacts, source: str = "") -> Check:
    if vm.cpu_mode in ("host-passthrough", "maximum"):
        return check_passthrough(pool, source, target, vm)
    if not vm.cpu:
        return line(PASS, "CPU", "the VM pins no CPU model, so QEMU's default model is used on both hosts")
    try:
        result = pool.call(target, lambda c: c.compareHypervisorCPU(None, None, None, None, vm.cpu, 0))
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return line(WARN, "CPU", "cannot tell: the target's libvirt driver does not compare CPUs")
        return line(WARN, "CPU", f"cannot tell: {error_text(e)}")
    if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return line(FAIL, "CPU", "the target's CPU cannot run the VM's CPU model")
    return line(PASS, "CPU", "the target's CPU runs the VM's CPU model")


def check_snapshots(vm: VmFacts) -> Check:
    if vm.snapshots:
        return line(FAIL, "snapshots", f"the VM has {vm.snapshots} snapshot(s); libvirt refuses to migrate it")
    return line(PASS, "snapshots", "none")


def run(pool: Pool, ref: VmRef, target: str, see_target: bool = True) -> tuple[list[Check], VmFacts | None]:
    """The libvirt part of the checklist; the caller adds state, lock, freezes and grants.

    ``see_target`` False (no grant on the target host as a whole): the target's facts (versions,
    memory, pools and their files, CPU) are not read into the answer at all, like in reports.
    """
    try:
        dst = pool.call(target, lambda c: host_facts(target, c))
        dst_pools = pool.call(target, pools_with_paths) if see_target else []
    except (HostDown, libvirt.libvirtError) as e:
        return [line(FAIL, "target reachable", str(e))], None
    checks = [line(PASS, "target reachable", f"{target} answers through libvirt")]
    vm = pool.call(ref.host, vm_facts(ref.uuid))
    if see_target:
        src = pool.call(ref.host, lambda c: host_facts(ref.host, c))
        src_pools = pool.call(ref.host, pools_with_paths)
        checks += check_versions(src, dst)
        checks.append(check_memory(vm, dst))
        checks += check_storage(vm, src_pools, dst_pools)
        checks.append(check_cpu(pool, target, vm, ref.host))
    else:
        why = f"not shown: your grants do not cover {target} as a whole (versions, memory, storage, CPU)"
        checks.append(line(WARN, "target facts", why))
    checks.append(check_snapshots(vm))
    return checks, vm
