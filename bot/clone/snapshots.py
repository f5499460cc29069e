"""Internal snapshots: virsh snapshot-create-as, snapshot-list, snapshot-revert, snapshot-delete.

What libvirt 9 / QEMU 7 cannot do is said in plain words before anything is
tried: an internal snapshot lives inside qcow2 images, so a writable raw disk
or UEFI (pflash) firmware rules it out; a running VM pauses while its memory
is saved; an external snapshot (made outside the bot) cannot be reverted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from bot import times
from bot.clone import metadata
from bot.clone.disks import disks, uses_pflash
from bot.commands import Command
from bot.hypervisor.fleet import Fleet, VmRef, VmRow
from bot.hypervisor.lifecycle import Lifecycle, Progress, Refused
from bot.hypervisor.pool import HostDown
from bot.reply import Reply, Status

SNAPSHOT_TIMEOUT = 3600.0  # saving a big VM's memory takes a while; the host is not down meanwhile
EXTERNAL = (
    "{snap} is an external snapshot (made outside vmbot): libvirt 9 cannot revert or delete external "
    "snapshots; nothing was changed"
)
LIMITS = (
    "internal snapshots need every writable disk in qcow2 format and no UEFI (pflash) firmware "
    "(libvirt 9 / QEMU 7 cannot snapshot those internally)"
)


def blocker(domain_xml: str, vm: str) -> str | None:
    """Why this VM cannot take an internal snapshot, in words an operator can act on; None if it can."""
    if uses_pflash(domain_xml):
        return f"{vm} boots UEFI firmware from pflash: {LIMITS}; nothing was changed"
    for d in disks(domain_xml):
        if d.writable and d.format != "qcow2":
            fmt = d.format or "raw (no format stated)"
            return f"{vm} has a writable {fmt} disk {d.target}: {LIMITS}; nothing was changed"
    return None


def snapshot_xml(name: str, description: str) -> str:
    """The <domainsnapshot> to create, built with xml.etree (names are never pasted into XML text)."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    return ET.tostring(root, encoding="unicode")


def default_name() -> str:
    return f"snap-{times.compact()}"


def is_external(snapshot_xml_text: str) -> bool:
    root = ET.fromstring(snapshot_xml_text)
    memory = root.find("memory")
    if memory is not None and memory.get("snapshot") == "external":
        return True
    return any(d.get("snapshot") == "external" for d in root.iterfind("./disks/disk"))


def check(lc: Lifecycle, ref: VmRef, cmd: Command) -> str | None:
    """Why the snapshot command cannot run on this VM now (asked before approval and again before acting)."""
    action = cmd.action.name

    def read(dom: libvirt.virDomain) -> tuple[str, dict[str, str]]:
        return dom.XMLDesc(0), {s.getName(): s.getXMLDesc(0) for s in dom.listAllSnapshots(0)}

    domain_xml, snaps = lc.dom(ref, read)
    if mark := metadata.template(domain_xml):
        return (
            f"{ref.name} is version {mark.version} of template {mark.name}: a template's disks are never written "
            f"(linked clones use them as their base), and a snapshot or revert writes into them"
        )
    if action == "snapshot":
        name = cmd.targets[1] if len(cmd.targets) > 1 else ""
        if name in snaps:
            return f"{ref.name} already has a snapshot named {name!r}; pick another name"
        return blocker(domain_xml, ref.name)
    name = cmd.targets[1]
    if name not in snaps:
        known = ", ".join(sorted(snaps)) or "none"
        return f"{ref.name} has no snapshot named {name!r} (its snapshots: {known})"
    if is_external(snaps[name]):
        return EXTERNAL.format(snap=name)
    return None


def _create(lc: Lifecycle, ref: VmRef, cmd: Command, progress: Progress) -> str:
    if why := check(lc, ref, cmd):
        raise Refused(why)
    name = cmd.targets[1] if len(cmd.targets) > 1 else default_name()
    state = lc.state(ref)
    if state.active:
        progress(f"{ref.name} is {state.name}: it pauses while its memory is saved, then carries on")
    xml = snapshot_xml(name, str(cmd.flag("description") or ""))
    lc.dom(ref, lambda d: d.snapshotCreateXML(xml, 0), SNAPSHOT_TIMEOUT)
    kept = "disks and memory" if state.active else "disks (it was shut off)"
    return f"snapshot {name} taken: {kept}"


def _revert(lc: Lifecycle, ref: VmRef, cmd: Command, _p: Progress) -> str:
    if why := check(lc, ref, cmd):
        raise Refused(why)
    name = cmd.targets[1]
    lc.dom(ref, lambda d: d.revertToSnapshot(d.snapshotLookupByName(name, 0), 0), SNAPSHOT_TIMEOUT)
    return f"reverted to snapshot {name}; {ref.name} is {lc.state(ref).name}"


def _delete(lc: Lifecycle, ref: VmRef, cmd: Command, _p: Progress) -> str:
    if why := check(lc, ref, cmd):
        raise Refused(why)
    name = cmd.targets[1]
    lc.dom(ref, lambda d: d.snapshotLookupByName(name, 0).delete(0), SNAPSHOT_TIMEOUT)
    return f"snapshot {name} deleted"


OPS = {"snapshot": _create, "revert": _revert, "snapshot-delete": _delete}


def _when(root: ET.Element) -> str:
    stamp = int(root.findtext("creationTime") or 0)
    return times.minute(stamp)


def listing(fleet: Fleet, row: VmRow) -> Reply:
    """``virsh snapshot-list``: oldest first, with time, the state it keeps, its description."""

    def read(conn: libvirt.virConnect) -> tuple[list[str], str]:
        dom = conn.lookupByUUIDString(row.ref.uuid)
        current = dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else ""
        return [s.getXMLDesc(0) for s in dom.listAllSnapshots(0)], current

    try:
        found, current = fleet.pool.call(row.ref.host, read)
    except (HostDown, libvirt.libvirtError) as e:
        return Reply(Status.FAILED, f"{row.ref}: {e}")
    roots = sorted((ET.fromstring(x) for x in found), key=lambda r: int(r.findtext("creationTime") or 0))
    lines = []
    for r in roots:
        name = r.findtext("name") or ""
        kind = " external" if is_external(ET.tostring(r, encoding="unicode")) else ""
        note = f"  {r.findtext('description')}" if r.findtext("description") else ""
        mark = "  (current)" if name == current else ""
        lines.append(f"{name}  {_when(r)}  {r.findtext('state') or '?'}{kind}{note}{mark}")
    head = f"{row.ref}: {len(lines)} snapshot{'s' * (len(lines) != 1)}"
    return Reply(Status.OK, head, lines or ["(none; take one with: snapshot VM [NAME])"])
