"""Is this domain XML safe to define with root's power on a host? One allowlist for every XML vmbot defines.

libvirt runs what a definition names: a ``<qemu:commandline>`` argument, an
``<emulator>`` binary, a kernel or disk path anywhere on the host, a
``<hostdev>`` that hands a host device to the guest. XML that comes back from
a backup file, a clone, a template version or a template mark is written on
someone's behalf, so every element and attribute must be on the list in
``bot.hypervisor.xmlallow``, and every path must lie inside an allowed storage
pool or be an exact file the caller vouches for (a clone keeps the kernel,
firmware and emulator its source already uses: files the host's admin chose).
A serial ``<log file>`` is a host file vmbot's VM would write: allowed only
where vouched for (a template mark keeps its own), never from a backup.
Anything else is refused, and each refusal names the element.

API (restore, clones, templates)::

    rules = host_rules(conn, pools=("vmbot-pool",), files={"/boot/vmlinuz"})  # or Rules(...) directly
    problems(xml_text, rules) -> list[str]    # empty: safe
    check(xml_text, rules) -> ET.Element      # raises UnsafeXML(first problem) or returns the parsed root
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

import libvirt

from bot.hypervisor.xmlallow import (
    CHAR_TYPES,
    DISK_FORMATS,
    DISK_SOURCE_ATTRS,
    DISK_TYPES,
    DOMAIN,
    IFACE_TYPES,
    LEAF,
    LEAVES_ANY_ATTRS,
    PATH_LEAVES,
    RNG_SOURCES,
    SECLABEL_TYPES,
    SYSINFO_TYPES,
    Node,
)


class UnsafeXML(Exception):
    """The definition names something vmbot must not define; the message names the element."""


@dataclass(frozen=True)
class Rules:
    """Where files may be: storage pools (name -> target directory), the host's emulator binaries, and
    exact files a caller vouches for (a clone keeps the kernel and firmware its source already boots)."""

    pools: dict[str, str] = field(default_factory=dict)
    emulators: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()

    def vouched(self, path: str) -> bool:
        """One of the exact files the caller vouches for (``..`` resolved first, so no sibling slips by)."""
        return path.startswith("/") and os.path.normpath(path) in {os.path.normpath(f) for f in self.files}

    def path_ok(self, path: str) -> bool:
        """Inside an allowed pool's directory, after resolving ``..`` (symlinks are the host's business)."""
        if not path.startswith("/"):
            return False
        if self.vouched(path):
            return True
        real = os.path.normpath(path)
        return any(real.startswith(os.path.normpath(d).rstrip("/") + "/") for d in self.pools.values() if d)


def check(text: str, rules: Rules) -> ET.Element:
    """Parse and check; raise UnsafeXML with the first problem, or return the root element."""
    root, found = _parse(text)
    found = found or problems_of(root, rules)
    if found:
        raise UnsafeXML(found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    assert root is not None
    return root


def problems(text: str, rules: Rules) -> list[str]:
    """Every reason this XML is refused; empty when it is safe."""
    root, found = _parse(text)
    return found or problems_of(root, rules)


def _parse(text: str) -> tuple[ET.Element | None, list[str]]:
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        return None, ["a DOCTYPE or ENTITY declaration is not allowed"]
    try:
        return ET.fromstring(text), []
    except ET.ParseError as e:
        return None, [f"not well-formed XML: {e}"]


def problems_of(root: ET.Element | None, rules: Rules) -> list[str]:
    if root is None or root.tag != "domain":
        return ["the root element must be <domain>"]
    out: list[str] = []
    _walk(root, DOMAIN, "domain", out)
    if root.get("type") not in (None, "qemu", "kvm", "test"):
        out.append(f"<domain type='{root.get('type')}'> is not allowed (qemu, kvm or test)")
    _semantics(root, rules, out)
    return out


def _walk(el: ET.Element, node: Node, where: str, out: list[str]) -> None:
    if "*" not in node.attrs:
        for attr in el.attrib:
            if attr not in node.attrs:
                out.append(f"<{where}> attribute {_name(attr)} is not allowed")
    if where == "domain/metadata":
        return
    for child in el:
        tag = child.tag if isinstance(child.tag, str) else "?"
        path = f"{where}/{_name(tag)}"
        sub = node.children.get(tag)
        if sub is None and node.any_child_leaf and tag in LEAVES_ANY_ATTRS:
            sub = LEAF
        if sub is None:
            out.append(f"<{path}> is not allowed")
            continue
        _walk(child, sub, path, out)


def _name(tag: str) -> str:
    """A namespaced tag as a prefix-free, readable name: {http://libvirt.org/schemas/domain/qemu/1.0}commandline."""
    return tag.split("}", 1)[1] + f" (namespace {tag[1:].split('}', 1)[0]})" if tag.startswith("{") else tag


def _semantics(root: ET.Element, rules: Rules, out: list[str]) -> None:
    """What the tree shape cannot say: types and paths."""
    for leaf in PATH_LEAVES:
        for el in root.iterfind(f"os/{leaf}"):
            path = (el.text or "").strip()
            if path and not rules.path_ok(path):
                out.append(f"<os/{leaf}> {path!r} is outside the allowed storage pools")
            if leaf == "nvram" and el.get("template") and not rules.path_ok(el.get("template", "")):
                out.append(f"<os/nvram> template {el.get('template')!r} is outside the allowed storage pools")
    for el in root.iterfind("devices/emulator"):
        if (el.text or "").strip() not in rules.emulators and not rules.vouched((el.text or "").strip()):
            out.append(f"<devices/emulator> {(el.text or '').strip()!r} is not one of the host's emulators")
    for disk in root.iterfind("devices/disk"):
        _disk(disk, rules, out)
    for iface in root.iterfind("devices/interface"):
        if iface.get("type") not in IFACE_TYPES:
            out.append(f"<devices/interface type='{iface.get('type')}'> is not allowed (network or bridge)")
    for kind in ("serial", "console", "channel"):
        for dev in root.iterfind(f"devices/{kind}"):
            _chardev(kind, dev, rules, out)
    for backend in root.iterfind("devices/rng/backend"):
        if backend.get("model") != "random" or (backend.text or "").strip() not in RNG_SOURCES:
            out.append(f"<devices/rng/backend> must be model='random' with one of {', '.join(sorted(RNG_SOURCES))}")
    for info in root.iterfind("sysinfo"):
        if info.get("type") not in SYSINFO_TYPES:
            out.append(f"<sysinfo type='{info.get('type')}'> is not allowed (smbios or fwcfg without files)")
    for label in root.iterfind("seclabel"):
        if label.get("type", "dynamic") not in SECLABEL_TYPES or label.get("relabel") == "no":
            out.append(
                f"<seclabel type='{label.get('type')}' relabel='{label.get('relabel')}'> is not allowed"
                " (only libvirt's default: dynamic, relabelled)"
            )
    for backend in root.iterfind("devices/tpm/backend"):
        if backend.get("type") != "emulator":
            out.append(f"<devices/tpm/backend type='{backend.get('type')}'> is not allowed (emulator only)")


def _disk(disk: ET.Element, rules: Rules, out: list[str]) -> None:
    kind = disk.get("type", "file")
    if kind not in DISK_TYPES:
        out.append(f"<devices/disk type='{kind}'> is not allowed (file, block or volume in an allowed pool)")
        return
    for source in disk.iterfind("source"):
        for attr in sorted(set(source.attrib) - DISK_SOURCE_ATTRS[kind]):
            out.append(f"<devices/disk type='{kind}'/source> attribute {attr} does not belong to this disk type")
        if kind == "volume" and source.get("pool") not in rules.pools:
            out.append(f"<devices/disk/source pool='{source.get('pool')}'> is not an allowed storage pool")
    for source in disk.iter("source"):  # every path-bearing attribute, whatever the type says
        for path in (source.get("file"), source.get("dev")):
            if path is not None and not rules.path_ok(path):
                out.append(f"<devices/disk/source> {path!r} is outside the allowed storage pools")
    for driver in disk.iterfind("driver"):
        if driver.get("type") is not None and driver.get("type") not in DISK_FORMATS:
            out.append(f"<devices/disk/driver type='{driver.get('type')}'> is not allowed (raw or qcow2)")
    for fmt in disk.iter("format"):
        if fmt.get("type") not in DISK_FORMATS:
            out.append(f"<devices/disk/backingStore/format type='{fmt.get('type')}'> is not allowed (raw or qcow2)")
    for backing in disk.iter("backingStore"):
        if backing.get("type") not in (None, "file", "block"):
            out.append(f"<devices/disk/backingStore type='{backing.get('type')}'> is not allowed")


def _chardev(kind: str, dev: ET.Element, rules: Rules, out: list[str]) -> None:
    ctype = dev.get("type", "pty")
    if ctype not in CHAR_TYPES:
        out.append(f"<devices/{kind} type='{ctype}'> is not allowed (pty, unix without a path, spicevmc)")
    if ctype == "unix" and any(s.get("path") is not None for s in dev.iterfind("source")):
        out.append(f"<devices/{kind} type='unix'> with a source path names a host file; not allowed")
    for log in dev.iterfind("log"):
        if not rules.vouched(log.get("file", "")):  # a pool directory is no place for a log: it could be a disk
            out.append(f"<devices/{kind}/log> {log.get('file')!r} is a host file vmbot may not have written")


def emulators_of(capabilities_xml: str) -> frozenset[str]:
    """The emulator binaries a host's capabilities list: the only ones a restored definition may name."""
    root = ET.fromstring(capabilities_xml)
    return frozenset((e.text or "").strip() for e in root.iterfind("guest/arch/emulator") if e.text)


def host_rules(conn: libvirt.virConnect, pools: Iterable[str] | None = None, files: Iterable[str] = ()) -> Rules:
    """The allowlist's facts about this host: the pools' directories (``pools`` names them; None: every
    active pool), its emulators, and the exact files the caller vouches for."""
    if pools is None:
        pools = [p.name() for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)]
    found = {}
    for name in pools:
        try:
            path = ET.fromstring(conn.storagePoolLookupByName(name).XMLDesc(0)).findtext("target/path")
        except libvirt.libvirtError:
            continue
        if path:
            found[name] = path
    return Rules(found, emulators_of(conn.getCapabilities()), frozenset(f for f in files if f))
