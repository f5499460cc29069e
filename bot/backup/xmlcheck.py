"""Is this domain XML safe to define with root's power on a host? An allowlist, not a denylist.

libvirt runs what a definition names: a ``<qemu:commandline>`` argument, an
``<emulator>`` binary, a kernel or disk path anywhere on the host, a
``<hostdev>`` that hands a host device to the guest. XML that comes back from
a backup file (or a clone, or a template) is user data, so every element and
attribute must be on the list below, and every path must lie inside a storage
pool the config allows. Anything else is refused, and the refusal names the
element, so an operator can see what to fix.

API (shared by restore, clones and templates)::

    rules = Rules(pools={"default": "/var/lib/libvirt/images"}, emulators={"/usr/bin/qemu-system-x86_64"})
    problems(xml_text, rules) -> list[str]    # empty: safe
    check(xml_text, rules) -> ET.Element      # raises UnsafeXML(first problem) or returns the parsed root
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

# element -> (allowed attributes, allowed children). Children not listed are refused.
# "*" as attributes: any attribute (leaf elements whose attributes name nothing on the host).
ANY = frozenset({"*"})
A = frozenset


def _s(*names: str) -> frozenset[str]:
    return frozenset(names)


_LEAF_WORDS = """
acpi apic pae vmport hap pmu smm kvm hidden hyperv relaxed vapic spinlocks vpindex runtime synic
stimer reset frequencies reenlightenment tlbflush ipi evmcs ioapic gic vmcoreinfo pvspinlock timer
catchup topology feature model vendor cache numa cell partition boot bootmenu smbios suspend-to-mem
suspend-to-disk driver target address alias hugepages page nosharepages locked allocation hard_limit
soft_limit swap_hard_limit min_guarantee weight vcpupin emulatorpin iothreadpin shares period quota
entry bios system baseBoard chassis oemStrings host guest memnode cipher total_bytes_sec
read_bytes_sec write_bytes_sec total_iops_sec read_iops_sec write_iops_sec inbound outbound tag
resolution acceleration discard
"""
LEAVES_ANY_ATTRS = frozenset(_LEAF_WORDS.split())  # leaf elements (anywhere under a LEAF) that name nothing on the host


@dataclass(frozen=True)
class Node:
    attrs: frozenset[str] = frozenset()
    children: dict[str, Node] = field(default_factory=dict)
    any_child_leaf: bool = False  # children from LEAVES_ANY_ATTRS are allowed, with their whole subtree


LEAF = Node(ANY, any_child_leaf=True)
DEVICE_COMMON = {"address": LEAF, "alias": LEAF, "boot": LEAF, "rom": LEAF}

DISK = Node(
    _s("type", "device", "snapshot", "model", "rawio", "sgio"),
    {
        "driver": Node(
            _s(
                "name",
                "type",
                "cache",
                "io",
                "discard",
                "detect_zeroes",
                "error_policy",
                "rerror_policy",
                "iothread",
                "queues",
                "copy_on_read",
                "ats",
                "iommu",
                "packed",
                "discard_no_unref",
                "queue_size",
            )
        ),
        "source": Node(_s("file", "dev", "pool", "volume", "mode", "startupPolicy", "index")),
        "target": Node(_s("dev", "bus", "tray", "removable", "rotation_rate")),
        "backingStore": Node(_s("type", "index")),
        "readonly": LEAF,
        "shareable": LEAF,
        "serial": LEAF,
        "wwn": LEAF,
        "transient": Node(_s("shareBacking")),
        "iotune": LEAF,
        "blockio": LEAF,
        "geometry": LEAF,
        "vendor": LEAF,
        "product": LEAF,
        **DEVICE_COMMON,
    },
)
INTERFACE = Node(
    _s("type", "trustGuestRxFilters"),
    {
        "mac": LEAF,
        "model": LEAF,
        "link": LEAF,
        "mtu": LEAF,
        "bandwidth": LEAF,
        "vlan": LEAF,
        "driver": LEAF,
        "coalesce": LEAF,
        "tune": LEAF,
        "source": Node(_s("network", "bridge", "portgroup", "portid")),
        "target": Node(_s("dev", "managed")),
        "virtualport": LEAF,
        "filterref": Node(_s("filter"), {"parameter": Node(_s("name", "value"))}),
        **DEVICE_COMMON,
    },
)
CHARDEV = Node(
    _s("type"),
    {
        "source": Node(_s("mode", "channel")),  # no path: a unix socket with a path is a host file
        "target": Node(_s("type", "port", "name", "state"), {"model": Node(_s("name"))}),
        "protocol": Node(_s("type")),
        **DEVICE_COMMON,
    },
)
DEVICES = Node(
    frozenset(),
    {
        "emulator": Node(frozenset()),  # its text is checked against the host's emulators
        "disk": DISK,
        "interface": INTERFACE,
        "serial": CHARDEV,
        "console": CHARDEV,
        "channel": CHARDEV,
        "controller": Node(
            _s("type", "index", "model", "ports", "vectors", "maxGrantFrames", "maxEventChannels"),
            {"driver": LEAF, "model": LEAF, "target": LEAF, "pcihole64": LEAF, **DEVICE_COMMON},
        ),
        "input": Node(_s("type", "bus", "model"), {"driver": LEAF, **DEVICE_COMMON}),
        "graphics": Node(
            _s(
                "type",
                "port",
                "autoport",
                "listen",
                "passwd",
                "keymap",
                "websocket",
                "sharePolicy",
                "passwdValidTo",
                "connected",
                "defaultMode",
                "tlsPort",
            ),
            {
                "listen": Node(_s("type", "address", "network")),
                "image": LEAF,
                "gl": Node(_s("enable")),
                "streaming": LEAF,
                "clipboard": LEAF,
                "mouse": LEAF,
                "filetransfer": LEAF,
                "channel": LEAF,
                "audio": LEAF,
            },
        ),
        "video": Node(
            frozenset(),
            {"model": Node(ANY, {"acceleration": LEAF, "resolution": LEAF}), "driver": LEAF, **DEVICE_COMMON},
        ),
        "sound": Node(_s("model"), {"codec": LEAF, "audio": LEAF, **DEVICE_COMMON}),
        "audio": Node(_s("id", "type")),
        "memballoon": Node(
            _s("model", "autodeflate", "freePageReporting"), {"stats": LEAF, "driver": LEAF, **DEVICE_COMMON}
        ),
        "rng": Node(_s("model"), {"backend": Node(_s("model")), "rate": LEAF, "driver": LEAF, **DEVICE_COMMON}),
        "watchdog": Node(_s("model", "action"), dict(DEVICE_COMMON)),
        "panic": Node(_s("model"), dict(DEVICE_COMMON)),
        "tpm": Node(_s("model"), {"backend": Node(_s("type", "version", "persistent_state")), **DEVICE_COMMON}),
        "vsock": Node(_s("model"), {"cid": Node(_s("auto", "address")), **DEVICE_COMMON}),
        "iommu": Node(_s("model"), {"driver": LEAF, **DEVICE_COMMON}),
    },
)
OS = Node(
    _s("firmware"),
    {
        "type": Node(_s("arch", "machine")),
        "kernel": Node(frozenset()),
        "initrd": Node(frozenset()),
        "cmdline": Node(frozenset()),
        "loader": Node(_s("readonly", "type", "secure", "stateless", "format")),
        "nvram": Node(_s("template", "format", "type")),
        "boot": LEAF,
        "bootmenu": LEAF,
        "smbios": LEAF,
        "bios": LEAF,
        "firmware": LEAF,
        "acpi": Node(frozenset()),
    },
)
DOMAIN = Node(
    _s("type", "id"),
    {
        "name": Node(frozenset()),
        "uuid": Node(frozenset()),
        "title": Node(frozenset()),
        "description": Node(frozenset()),
        "genid": Node(frozenset()),
        "metadata": Node(frozenset()),  # opaque to libvirt; its subtree is not checked
        "memory": LEAF,
        "currentMemory": LEAF,
        "maxMemory": LEAF,
        "vcpu": LEAF,
        "vcpus": LEAF,
        "iothreads": LEAF,
        "cputune": LEAF,
        "memoryBacking": LEAF,
        "memtune": LEAF,
        "blkiotune": LEAF,
        "numatune": LEAF,
        "resource": LEAF,
        "sysinfo": LEAF,
        "features": LEAF,
        "clock": LEAF,
        "pm": LEAF,
        "perf": LEAF,
        "on_poweroff": LEAF,
        "on_reboot": LEAF,
        "on_crash": LEAF,
        "on_lockfailure": LEAF,
        "cpu": Node(
            _s("mode", "match", "check", "migratable"),
            {
                "model": LEAF,
                "vendor": LEAF,
                "topology": LEAF,
                "feature": LEAF,
                "numa": LEAF,
                "cache": LEAF,
                "maxphysaddr": LEAF,
            },
        ),
        "os": OS,
        "devices": DEVICES,
        "seclabel": Node(_s("type", "model", "relabel"), {"label": Node(frozenset()), "imagelabel": Node(frozenset())}),
        "keywrap": LEAF,
    },
)
DISK_TYPES = {"file", "block", "volume"}
IFACE_TYPES = {"network", "bridge"}
CHAR_TYPES = {"pty", "null", "spicevmc", "qemu-vdagent", "unix"}
RNG_SOURCES = {"/dev/urandom", "/dev/random", "/dev/hwrng"}
PATH_LEAVES = {"kernel", "initrd", "loader", "nvram"}


class UnsafeXML(Exception):
    """The definition names something a backup must not bring back; the message names the element."""


@dataclass(frozen=True)
class Rules:
    """Where files may be: storage pools (name -> target directory), the host's emulator binaries, and
    exact files a caller vouches for (a clone keeps the kernel and firmware its source already boots)."""

    pools: dict[str, str] = field(default_factory=dict)
    emulators: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()

    def path_ok(self, path: str) -> bool:
        """Inside an allowed pool's directory, after resolving ``..`` (symlinks are the host's business)."""
        if not path.startswith("/"):
            return False
        real = os.path.normpath(path)
        if real in {os.path.normpath(f) for f in self.files}:
            return True
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
        if (el.text or "").strip() not in rules.emulators:
            out.append(f"<devices/emulator> {(el.text or '').strip()!r} is not one of the host's emulators")
    for disk in root.iterfind("devices/disk"):
        _disk(disk, rules, out)
    for iface in root.iterfind("devices/interface"):
        if iface.get("type") not in IFACE_TYPES:
            out.append(f"<devices/interface type='{iface.get('type')}'> is not allowed (network or bridge)")
    for kind in ("serial", "console", "channel"):
        for dev in root.iterfind(f"devices/{kind}"):
            _chardev(kind, dev, out)
    for backend in root.iterfind("devices/rng/backend"):
        if backend.get("model") != "random" or (backend.text or "").strip() not in RNG_SOURCES:
            out.append(f"<devices/rng/backend> must be model='random' with one of {', '.join(sorted(RNG_SOURCES))}")
    for backend in root.iterfind("devices/tpm/backend"):
        if backend.get("type") != "emulator":
            out.append(f"<devices/tpm/backend type='{backend.get('type')}'> is not allowed (emulator only)")


def _disk(disk: ET.Element, rules: Rules, out: list[str]) -> None:
    kind = disk.get("type", "file")
    if kind not in DISK_TYPES:
        out.append(f"<devices/disk type='{kind}'> is not allowed (file, block or volume in an allowed pool)")
        return
    for source in disk.iter("source"):
        if kind == "volume" or source.get("pool"):
            if source.get("pool") not in rules.pools:
                out.append(f"<devices/disk/source pool='{source.get('pool')}'> is not an allowed storage pool")
            continue
        path = source.get("file") or source.get("dev")
        if path and not rules.path_ok(path):
            out.append(f"<devices/disk/source> {path!r} is outside the allowed storage pools")
    for backing in disk.iter("backingStore"):
        if backing.get("type") not in (None, "file", "block"):
            out.append(f"<devices/disk/backingStore type='{backing.get('type')}'> is not allowed")


def _chardev(kind: str, dev: ET.Element, out: list[str]) -> None:
    ctype = dev.get("type", "pty")
    if ctype not in CHAR_TYPES:
        out.append(f"<devices/{kind} type='{ctype}'> is not allowed (pty, unix without a path, spicevmc)")
    if ctype == "unix" and any(s.get("path") is not None for s in dev.iterfind("source")):
        out.append(f"<devices/{kind} type='unix'> with a source path names a host file; not allowed")


def emulators_of(capabilities_xml: str) -> frozenset[str]:
    """The emulator binaries a host's capabilities list: the only ones a restored definition may name."""
    root = ET.fromstring(capabilities_xml)
    return frozenset((e.text or "").strip() for e in root.iterfind("guest/arch/emulator") if e.text)


def pool_rules(pools: Iterable[tuple[str, str]], emulators: frozenset[str]) -> Rules:
    return Rules(dict(pools), emulators)
