"""Which elements and attributes a domain definition vmbot defines may have: the allowlist's shape.

Why a tree and not a list of bad tags: anything libvirt learns to do next
release (a new device, a new way to name a host file) is refused until
someone reads it and adds it here. The checks that a shape cannot express
(paths, types, emulators) live in ``bot.hypervisor.xmlcheck``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# element -> (allowed attributes, allowed children). Children not listed are refused.
# "*" as attributes: any attribute (leaf elements whose attributes name nothing on the host).
ANY = frozenset({"*"})


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

BACKING = Node(_s("type", "index"), {"format": Node(_s("type")), "source": Node(_s("file", "dev", "index"))})
BACKING.children["backingStore"] = BACKING  # a chain: each layer names its own backing file

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
        "backingStore": BACKING,
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
        "log": Node(_s("file", "append")),  # a host file: allowed only where the caller vouches for it
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
_ENTRY = Node(_s("name"))  # no file=: fwcfg's <entry file> copies a host file into the guest
SYSINFO = Node(
    _s("type"),
    {
        **{part: Node(frozenset(), {"entry": _ENTRY}) for part in ("bios", "system", "baseBoard", "chassis")},
        "oemStrings": Node(frozenset(), {"entry": Node(frozenset())}),
        "entry": _ENTRY,
    },
)
OS = Node(
    _s("firmware"),
    {
        "type": Node(_s("arch", "machine")),
        "kernel": Node(frozenset()),
        "initrd": Node(frozenset()),
        "dtb": Node(frozenset()),
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
        "sysinfo": SYSINFO,
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
        # its type, model and relabel are checked in xmlcheck: only what libvirt generates by default
        "keywrap": LEAF,
    },
)
DISK_TYPES = {"file", "block", "volume"}
# the <source> attributes each disk type reads; any other one is a decoy (libvirt drops it, a check might not)
DISK_SOURCE_ATTRS = {
    "file": _s("file", "startupPolicy", "index"),
    "block": _s("dev", "startupPolicy", "index"),
    "volume": _s("pool", "volume", "mode", "startupPolicy", "index"),
}
DISK_FORMATS = {"raw", "qcow2"}
SYSINFO_TYPES = {"smbios", "fwcfg"}
SECLABEL_TYPES = {"dynamic"}  # what libvirt generates by default; static or none pick QEMU's user or drop confinement
IFACE_TYPES = {"network", "bridge"}
CHAR_TYPES = {"pty", "null", "spicevmc", "qemu-vdagent", "unix"}
RNG_SOURCES = {"/dev/urandom", "/dev/random", "/dev/hwrng"}
PATH_LEAVES = {"kernel", "initrd", "dtb", "loader", "nvram"}
