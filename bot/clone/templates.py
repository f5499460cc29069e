"""Templates: which VM a clone copies, template mark/unmark, versions, the templates listing.

A template is a shut-off VM whose ``<metadata>`` carries vmbot's template mark
(name and version). Its disks are the base of linked clones, so vmbot makes
them read-only, turns autostart off and refuses to start it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from bot import times
from bot.approval.preview import size
from bot.clone import metadata
from bot.clone.clone import XML_FLAGS
from bot.clone.disks import disks
from bot.clone.linked import disk_paths, linked_clones
from bot.commands import Command
from bot.hypervisor.fleet import Fleet, VmRef, VmRow
from bot.hypervisor.lifecycle import Lifecycle, Progress, Refused
from bot.hypervisor.xmlcheck import host_rules, problems
from bot.reply import Reply, Status

Op = Callable[[Lifecycle, VmRef, Command, Progress], object]


@dataclass(frozen=True)
class Template:
    row: VmRow
    mark: metadata.TemplateMark
    bytes: int  # what its disks hold (allocation)
    capacity: int  # what they can hold


def _host_templates(host: str, conn: libvirt.virConnect) -> list[tuple[str, metadata.TemplateMark, int, int]]:
    out = []
    for dom in conn.listAllDomains(0):
        root = ET.fromstring(dom.XMLDesc(0))
        if mark := metadata.template(root):
            used = capacity = 0
            for path in disk_paths(conn, root):
                try:
                    _kind, cap, alloc = conn.storageVolLookupByPath(path).info()
                except libvirt.libvirtError:
                    continue
                used, capacity = used + alloc, capacity + cap
            out.append((dom.UUIDString(), mark, used, capacity))
    return out


class Sources:
    """Finds what ``clone SOURCE`` or ``template create --from VM`` copies, and names template versions."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def templates(self, hosts: list[str] | None = None) -> list[Template]:
        """Every template on the given hosts, by name then version."""
        inv = self.fleet.inventory(hosts)
        rows = {(r.ref.host, r.ref.uuid): r for r in inv.rows}
        out = []
        for host, answer in self.fleet.pool.fan_out(_host_templates, hosts).items():
            if isinstance(answer, Exception):
                continue
            out += [Template(rows[(host, u)], m, b, c) for u, m, b, c in answer if (host, u) in rows]
        return sorted(out, key=lambda t: (t.mark.name, t.mark.version, t.row.ref.host))

    def __call__(self, cmd: Command) -> VmRow | str:
        (pattern,) = cmd.vm_args()
        host, _, name = (
            pattern.partition("/") if pattern.split("/", 1)[0] in self.fleet.pool.names else ("", "", pattern)
        )
        if cmd.action.name == "template" and cmd.new_names() and (why := self.clash(cmd.new_names()[0])):
            return why
        if cmd.action.name == "clone":
            found = [t for t in self.templates([host] if host else None) if t.mark.name == name]
            if found and not cmd.flag("version") and (vms := self.plain_vms(name, found, host)):
                return (
                    f"'{pattern}' names both template {name} and the VM {', '.join(vms)}; "
                    f"clone the template with --version N, or the VM by its UUID"
                )
            if found:
                return self._version(cmd, name, found)
        if cmd.flag("version"):
            return f"--version needs a template as the source; '{pattern}' is not a template name (see: templates)"
        sel = self.fleet.resolve([pattern])
        if sel.problems:
            return "; ".join(sel.problems)
        if len(sel.rows) > 1:
            return f"'{pattern}' matches {len(sel.rows)} VMs: {', '.join(str(r) for r in sel.refs)}; name one"
        if cmd.flag("linked") and not any(t.row.ref == sel.rows[0].ref for t in self.templates([sel.rows[0].ref.host])):
            return (
                f"--linked clones only from a template: an overlay's base must never change, and only a "
                f"template's disks are kept read-only ('{pattern}' is not a template; see: template mark)"
            )
        return sel.rows[0]

    def plain_vms(self, name: str, found: list[Template], host: str = "") -> list[str]:
        """VMs called ``name`` that are none of the template's versions: a clone of NAME is then ambiguous."""
        versions = {t.row.ref for t in found}
        rows = self.fleet.inventory([host] if host else None).rows
        return [str(r.ref) for r in rows if r.ref.name == name and r.ref not in versions]

    def clash(self, name: str) -> str | None:
        """``template create NAME`` never takes the name of a VM that is not already template NAME: a later
        ``clone NAME`` would silently copy the template instead of that VM."""
        found = [t for t in self.templates() if t.mark.name == name]
        if vms := self.plain_vms(name, found):
            return f"a VM is already called {name} ({', '.join(vms)}); pick another template name"
        return None

    def _version(self, cmd: Command, name: str, found: list[Template]) -> VmRow | str:
        hosts = sorted({t.row.ref.host for t in found})
        if len(hosts) > 1:
            return f"template {name} is on {len(hosts)} hosts: {', '.join(hosts)}; name one as host/{name}"
        want = cmd.flag("version")
        if not want:
            return found[-1].row
        pick = [t for t in found if t.mark.version == int(str(want))]
        if not pick:
            have = ", ".join(str(t.mark.version) for t in found)
            return f"template {name} has no version {want} (versions: {have})"
        return pick[0].row

    def new_name(self, cmd: Command, row: VmRow, name: str) -> str:
        """A clone keeps the name given; template version N of NAME is the VM NAME-vN."""
        if cmd.action.name != "template":
            return name
        versions = [t.mark.version for t in self.templates([row.ref.host]) if t.mark.name == name]
        return f"{name}-v{max(versions, default=0) + 1}"


def listing(sources: Sources, may: Callable[[VmRow], bool]) -> Reply:
    """``templates``: each version with its VM, size, source VM and date; only VMs the requester may list.

    A template is a VM: one outside the requester's grants is left out, as ``list`` leaves it out.
    """
    found = [t for t in sources.templates() if may(t.row)]
    lines = [
        f"{t.mark.name} v{t.mark.version}: {t.row.ref}, {size(t.bytes // 1024)} used of {size(t.capacity // 1024)}, "
        f"from {t.mark.source or '?'}, "
        f"{t.mark.created[:16].replace('T', ' ')} UTC"
        for t in found
    ]
    head = f"{len({(t.row.ref.host, t.mark.name) for t in found})} template(s), {len(found)} version(s)"
    return Reply(
        Status.OK, head, lines or ["(none; make one with: template mark VM, or template create NAME --from VM)"]
    )


def now() -> str:
    return times.iso()


def _redefine(lc: Lifecycle, ref: VmRef, change: Callable[[ET.Element], None]) -> None:
    """Change the VM's persistent XML, checked against the allowlist like every XML vmbot defines."""

    def run(conn: libvirt.virConnect) -> None:
        dom = conn.lookupByUUIDString(ref.uuid)
        root = ET.fromstring(dom.XMLDesc(XML_FLAGS))
        keep = {d.path for d in disks(root) if d.path}
        keep |= {(root.findtext(f"os/{t}") or "").strip() for t in ("kernel", "initrd", "dtb", "loader", "nvram")}
        keep |= {el.get("template", "") for el in root.iterfind("os/nvram")}
        keep.add((root.findtext("devices/emulator") or "").strip())
        keep |= {log.get("file", "") for log in root.iterfind("devices/*/log")}  # logs its admin chose
        change(root)
        xml = ET.tostring(root, encoding="unicode")
        if found := problems(xml, host_rules(conn, files=keep)):
            raise Refused(f"{ref.name}'s XML is not allowed: {'; '.join(found)}")
        conn.defineXML(xml)

    lc.pool.call(ref.host, run)


def _mark(lc: Lifecycle, ref: VmRef, cmd: Command, _p: Progress) -> str:
    xml = lc.dom(ref, lambda d: d.XMLDesc(0))
    if mark := metadata.template(xml):
        return f"{ref.name} is already version {mark.version} of template {mark.name}"
    versions = [t.mark.version for t in Sources(lc.fleet).templates([ref.host]) if t.mark.name == ref.name]
    marked = tuple(d.target for d in disks(xml) if d.writable)
    new = metadata.TemplateMark(ref.name, max(versions, default=0) + 1, str(ref), now(), marked)

    def change(root: ET.Element) -> None:
        for el, d in zip(root.iterfind("devices/disk"), disks(root), strict=True):
            if d.target in marked:
                ET.SubElement(el, "readonly")
        metadata.put(root, new)

    _redefine(lc, ref, change)
    lc.dom(ref, lambda d: d.setAutostart(0))
    return f"marked as version {new.version} of template {new.name}: autostart off, {len(marked)} disk(s) read-only"


def _unmark(lc: Lifecycle, ref: VmRef, _cmd: Command, _p: Progress) -> str:
    mark = metadata.template(lc.dom(ref, lambda d: d.XMLDesc(0)))
    if mark is None:
        return f"{ref.name} is not a template"
    if clones := lc.pool.call(ref.host, lambda c: linked_clones(c, ref.uuid)):
        raise Refused(
            f"{ref.name} still has {len(clones)} linked clone(s): {', '.join(clones)}; their disks are overlays on "
            f"its disks, which must not change: remove them first (or give them full copies)"
        )

    def change(root: ET.Element) -> None:
        for el, d in zip(root.iterfind("devices/disk"), disks(root), strict=True):
            if d.target in mark.marked:
                for ro in el.findall("readonly"):
                    el.remove(ro)
        metadata.strip(root)

    _redefine(lc, ref, change)
    return f"no longer a template (was version {mark.version} of {mark.name}); its disks are writable again"


def _op(lc: Lifecycle, ref: VmRef, cmd: Command, progress: Progress) -> str:
    return (_mark if cmd.targets[0] == "mark" else _unmark)(lc, ref, cmd, progress)


def guard(ops: dict[str, Op]) -> None:
    """Wrap start, autostart and undefine: a template never starts, a base with overlays is never deleted."""
    start, autostart, undefine = ops["start"], ops["autostart"], ops["undefine"]

    def template_of(lc: Lifecycle, ref: VmRef) -> metadata.TemplateMark | None:
        return metadata.template(lc.dom(ref, lambda d: d.XMLDesc(0)))

    def guarded_start(lc: Lifecycle, ref: VmRef, cmd: Command, p: Progress) -> object:
        if mark := template_of(lc, ref):
            raise Refused(metadata.start_refusal(ref.name, mark))
        return start(lc, ref, cmd, p)

    def guarded_autostart(lc: Lifecycle, ref: VmRef, cmd: Command, p: Progress) -> object:
        if not cmd.flag("disable") and (mark := template_of(lc, ref)):
            raise Refused(metadata.start_refusal(ref.name, mark))
        return autostart(lc, ref, cmd, p)

    def guarded_undefine(lc: Lifecycle, ref: VmRef, cmd: Command, p: Progress) -> object:
        if cmd.flag("remove-storage") and (clones := lc.pool.call(ref.host, lambda c: linked_clones(c, ref.uuid))):
            raise Refused(
                f"{ref.name} has {len(clones)} linked clone(s) whose disks are overlays on its disks: "
                f"{', '.join(clones)}; --remove-storage would corrupt them. Remove them first"
            )
        return undefine(lc, ref, cmd, p)

    ops.update(start=guarded_start, autostart=guarded_autostart, undefine=guarded_undefine, template=_op)
