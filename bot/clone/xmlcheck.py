"""The allowlist every domain XML passes before vmbot defines it.

A clone, a template version or a restored backup is XML the bot writes on
someone's behalf; it must never become a way to reach the host: no QEMU
pass-through (``qemu:commandline``), no host devices or host directories, no
chardev that writes a host file, no interface that runs a host script, no
network disk, no path outside the allowed storage pools. Minimal version for
clones; helper 10 writes the shared one for restore: the two are to be merged.
"""

from __future__ import annotations

import os.path
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
FORBIDDEN_DEVICES = {
    "hostdev": "host device pass-through",
    "filesystem": "a host directory shared into the guest",
    "redirdev": "USB redirection",
    "smartcard": "a host smartcard",
}
CHARDEVS = ("serial", "parallel", "console", "channel")
HOST_CHARDEVS = {"file", "pipe", "dev", "unix", "tcp", "udp", "nmdm"}
BAD_INTERFACES = {"ethernet", "hostdev", "vhostuser", "server", "client", "mcast", "udp", "vds"}
BOOT_FILES = ("kernel", "initrd", "dtb", "loader", "nvram")


def inside(path: str, roots: Iterable[str]) -> bool:
    """Is ``path`` (normalised, no ``..`` tricks) inside one of ``roots``?"""
    real = os.path.normpath(path)
    if not os.path.isabs(real):
        return False
    return any(real.startswith(os.path.normpath(r).rstrip("/") + "/") for r in roots if r)


def check_domain_xml(xml: str, allowed_pool_paths: Mapping[str, str], allowed_files: Iterable[str] = ()) -> list[str]:
    """Every reason this XML must not be defined (empty: it may).

    ``allowed_pool_paths`` maps pool name to its target path; ``allowed_files``
    are exact files allowed besides them (a clone keeps its source's kernel,
    firmware and emulator: files the host's admin already chose).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return [f"not valid XML ({e})"]
    files = {os.path.normpath(f) for f in allowed_files}
    roots = list(allowed_pool_paths.values())

    def path_ok(path: str) -> bool:
        return os.path.normpath(path) in files or inside(path, roots)

    problems = [f"QEMU pass-through <{el.tag.split('}')[1]}> is not allowed" for el in root.iter() if QEMU_NS in el.tag]
    devices = root.find("devices")
    devs = list(devices) if devices is not None else []
    problems += [f"<{d.tag}>: {FORBIDDEN_DEVICES[d.tag]} is not allowed" for d in devs if d.tag in FORBIDDEN_DEVICES]
    problems += _disks(root, path_ok, allowed_pool_paths)
    problems += _chardevs(devs, path_ok)
    problems += _interfaces(devs)
    for tag in BOOT_FILES:
        el = root.find(f"os/{tag}")
        if el is not None and (el.text or "").strip() and not path_ok(el.text.strip()):
            problems.append(f"<{tag}> {el.text.strip()} is outside the allowed pools")
    emulator = root.findtext("devices/emulator")
    if emulator and os.path.normpath(emulator.strip()) not in files:
        problems.append(f"<emulator> {emulator.strip()} is not the emulator the source VM uses")
    for tpm in root.iterfind("devices/tpm/backend"):
        if tpm.get("type") == "passthrough":
            problems.append("<tpm> pass-through of the host's TPM is not allowed")
    return problems


def _disks(root: ET.Element, path_ok, pools: Mapping[str, str]) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for disk in root.iterfind("devices/disk"):
        kind, src = disk.get("type", "file"), disk.find("source")
        target = disk.find("target")
        name = target.get("dev", "?") if target is not None else "?"
        if kind in ("network", "dir", "nvme", "vhostuser"):
            out.append(f"disk {name}: type '{kind}' is not allowed (only files, block devices and pool volumes)")
            continue
        for el in [src, *disk.iterfind(".//backingStore/source")]:
            if el is None:
                continue
            if kind == "volume" and el is src:
                if el.get("pool") not in pools:
                    out.append(f"disk {name}: pool {el.get('pool')!r} is not an allowed pool")
                continue
            path = el.get("file") or el.get("dev")
            if path and not path_ok(path):
                out.append(f"disk {name}: {path} is outside the allowed pools")
    return out


def _chardevs(devs: list[ET.Element], path_ok) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for dev in devs:
        if dev.tag not in CHARDEVS:
            continue
        kind = dev.get("type", "pty")
        src = dev.find("source")
        auto_socket = kind == "unix" and dev.tag == "channel" and (src is None or not src.get("path"))
        if kind in HOST_CHARDEVS and not auto_socket:
            out.append(f"<{dev.tag} type='{kind}'>: a chardev backed by a host file or socket is not allowed")
        for log in dev.iterfind("log"):
            if log.get("file") and not path_ok(log.get("file", "")):
                out.append(f"<{dev.tag}> log {log.get('file')} is outside the allowed pools")
    return out


def _interfaces(devs: list[ET.Element]) -> list[str]:
    out = []
    for nic in (d for d in devs if d.tag == "interface"):
        if nic.get("type") in BAD_INTERFACES:
            out.append(f"<interface type='{nic.get('type')}'> is not allowed (networks and bridges only)")
        if nic.find("script") is not None or nic.find("downscript") is not None:
            out.append("<interface> with a host script is not allowed")
    return out
