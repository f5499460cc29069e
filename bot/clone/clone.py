"""One clone, virt-clone's way, through libvirt only: plan, check, copy each writable disk through its
pool, define, and take back everything made if any step fails or is cancelled.

The order is chosen for safety: the final XML is built and checked against the
allowlist before anything is made; the volumes are copied next, each named by
the new UUID (never by the VM's name); the domain is defined last. A crash
mid-copy therefore never leaves a defined VM whose disk is half copied (one
somebody could boot): at worst a volume named ``<uuid>-<disk>`` that no domain
uses. Read-only and shareable disks are shared, not copied.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from bot.approval.preview import size
from bot.clone import metadata
from bot.clone.disks import Disk, disks
from bot.clone.linked import overlay_disks
from bot.hypervisor.errors import error_text
from bot.hypervisor.fleet import VmRef
from bot.hypervisor.lifecycle import Progress, Refused, cancelled
from bot.hypervisor.pool import Pool
from bot.hypervisor.xmlcheck import host_rules, problems

COPY_TIMEOUT = 6 * 3600.0  # one disk copy may take long; it is not a host that stopped answering
TICK = 5.0  # seconds between progress notes while a disk copies
XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE  # a clone keeps its graphics passwords


@dataclass(frozen=True)
class Copy:
    target: str
    pool: str
    source_path: str
    volume: str  # the new volume's name: <new uuid>-<target>
    format: str
    capacity: int
    allocation: int
    linked: bool  # an overlay on source_path instead of a copy


@dataclass
class Plan:
    host: str
    source: VmRef
    name: str
    uuid: str
    xml: str = ""
    copies: list[Copy] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    flattened: list[str] = field(default_factory=list)  # overlays copied into standalone images


def new_mac(used: set[str]) -> str:
    """A random MAC in QEMU's 52:54:00 range that no VM on the host uses."""
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in used:
            used.add(mac)
            return mac


def _pools(conn: libvirt.virConnect) -> dict[str, str]:
    out = {}
    for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        path = ET.fromstring(p.XMLDesc(0)).findtext("target/path")
        if path:
            out[p.name()] = path
    return out


def _used_macs(conn: libvirt.virConnect) -> set[str]:
    macs = set()
    for dom in conn.listAllDomains(0):
        macs |= {m.get("address", "").lower() for m in ET.fromstring(dom.XMLDesc(0)).iterfind(".//interface/mac")}
    return macs


def _source_volume(conn: libvirt.virConnect, d: Disk) -> libvirt.virStorageVol:
    if d.kind == "volume":
        return conn.storagePoolLookupByName(d.pool).storageVolLookupByName(d.volume)
    return conn.storageVolLookupByPath(d.path)


def _copy(conn: libvirt.virConnect, d: Disk, new_uuid: str, linked: bool) -> Copy:
    try:
        vol = _source_volume(conn, d)
    except libvirt.libvirtError:
        where = d.path or f"{d.pool}/{d.volume}"
        raise Refused(
            f"disk {d.target} ({where}) is not a volume of a storage pool: vmbot copies disks only through pools"
        ) from None
    root = ET.fromstring(vol.XMLDesc(0))
    fmt = (
        "qcow2"
        if linked
        else (root.find("target/format").get("type", "raw") if root.find("target/format") is not None else "raw")
    )  # type: ignore[union-attr]
    if linked and (d.format or "raw") != "qcow2":
        raise Refused(f"disk {d.target} is {d.format or 'raw'}: a linked clone needs the template's disks in qcow2")
    _kind, capacity, allocation = vol.info()
    name = f"{new_uuid}-{d.target}.{'qcow2' if fmt == 'qcow2' else 'img'}"
    return Copy(d.target, vol.storagePoolLookupByVolume().name(), vol.path(), name, fmt, capacity, allocation, linked)


def plan(
    conn: libvirt.virConnect,
    source: VmRef,
    name: str,
    new_uuid: str,
    linked: bool,
    mark: metadata.CloneMark | metadata.TemplateMark,
) -> Plan:
    """Everything the clone will be, decided and checked before anything is made (runs on the host's worker)."""
    dom = conn.lookupByUUIDString(source.uuid)
    root = ET.fromstring(dom.XMLDesc(XML_FLAGS))
    template = metadata.template(root)
    marked = set(template.marked) if template else set()
    out = Plan(source.host, source, name, new_uuid)
    pools = _pools(conn)
    vouched = _boot_files(root)
    overlays = set(overlay_disks(ET.tostring(root, encoding="unicode")))
    for el, d in zip(root.iterfind("devices/disk"), disks(root), strict=True):
        if not d.has_source or not (d.writable or d.target in marked):
            out.shared.append(d.target)
            if d.path:
                vouched.add(d.path)
            continue
        c = _copy(conn, d, new_uuid, linked)
        out.copies.append(c)
        if d.target in overlays and not linked:  # createXMLFrom reads through the backing chain
            out.flattened.append(d.target)
        _point_disk(el, c, pools)
        if isinstance(mark, metadata.TemplateMark):  # a new template version: its disks are never written
            ET.SubElement(el, "readonly")
    _rewrite(root, name, new_uuid, _used_macs(conn))
    metadata.strip(root)
    if isinstance(mark, metadata.TemplateMark):
        mark = dataclasses.replace(mark, marked=tuple(c.target for c in out.copies))
    metadata.put(root, mark)
    out.xml = ET.tostring(root, encoding="unicode")
    if found := problems(out.xml, host_rules(conn, pools, vouched)):
        raise Refused(f"the clone's XML is not allowed: {'; '.join(found)}")
    return out


def _boot_files(root: ET.Element) -> set[str]:
    """Files the source already uses that the host's admin chose: kernel, initrd, firmware, emulator.

    The clone's allowlist vouches for exactly these; its own NVRAM is made fresh from the template.
    """
    found = {(root.findtext(f"os/{t}") or "").strip() for t in ("kernel", "initrd", "dtb", "loader")}
    found |= {el.get("template", "") for el in root.iterfind("os/nvram")}
    found.add((root.findtext("devices/emulator") or "").strip())
    return {f for f in found if f}


def _point_disk(el: ET.Element, c: Copy, pools: dict[str, str]) -> None:
    """The disk element now names the new volume (a file in its pool), writable, and says what it is."""
    for tag in ("source", "backingStore", "readonly"):
        for old in el.findall(tag):
            el.remove(old)
    block = el.get("type") == "block"  # an LVM or disk pool volume stays a block device
    el.set("type", "block" if block else "file")
    driver = el.find("driver")
    if driver is None:
        driver = ET.Element("driver", name="qemu")
        el.insert(0, driver)
    driver.set("type", c.format)
    path = f"{pools[c.pool].rstrip('/')}/{c.volume}"
    el.insert(1, ET.Element("source", {"dev" if block else "file": path}))
    if c.linked:  # QEMU refuses an overlay whose backing format is not stated
        backing = ET.Element("backingStore", type="file")
        ET.SubElement(backing, "format", type="qcow2")
        ET.SubElement(backing, "source", file=c.source_path)
        el.insert(2, backing)


def _rewrite(root: ET.Element, name: str, new_uuid: str, used_macs: set[str]) -> None:
    """New name, UUID and MACs; fresh NVRAM; no serial log shared with the source."""
    root.find("name").text = name  # type: ignore[union-attr]
    uuid_el = root.find("uuid")
    if uuid_el is None:
        uuid_el = ET.SubElement(root, "uuid")
    uuid_el.text = new_uuid
    for mac in root.iterfind("devices/interface/mac"):
        mac.set("address", new_mac(used_macs))
    nvram = root.find("os/nvram")
    if nvram is not None:  # libvirt makes a fresh one (from its template) under the new name
        nvram.text = None
    devices = root.find("devices")
    for dev in list(devices) if devices is not None else []:
        for log in dev.findall("log"):
            dev.remove(log)
    for graphics in root.iterfind("devices/graphics"):
        if graphics.get("autoport") == "no":  # two VMs cannot share one display port
            graphics.set("autoport", "yes")
            graphics.attrib.pop("port", None)
    for tpm_state in root.iterfind("devices/tpm/backend"):
        tpm_state.attrib.pop("persistent_state", None)  # emulator state lives under the new UUID: new state


def volume_xml(c: Copy) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = c.volume
    ET.SubElement(vol, "capacity", unit="bytes").text = str(c.capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"  # sparse
    ET.SubElement(ET.SubElement(vol, "target"), "format", type=c.format)
    if c.linked:
        backing = ET.SubElement(vol, "backingStore")
        ET.SubElement(backing, "path").text = c.source_path
        ET.SubElement(backing, "format", type="qcow2")
    return ET.tostring(vol, encoding="unicode")


class Failed(Exception):
    """A copy or the define failed; the message says what was cleaned up (or what could not be)."""


class Maker:
    """Runs one plan on the fleet's pool; on any failure or cancel removes what it made, then re-raises."""

    def __init__(self, pool: Pool, plan: Plan, progress: Progress) -> None:
        self.pool, self.plan, self.progress = pool, plan, progress
        self.made: list[tuple[str, str]] = []  # (pool, volume)
        self.defined = False
        self.left: list[str] = []  # what undo could not remove

    def run(self) -> str:
        started = time.monotonic()
        try:
            for i, c in enumerate(self.plan.copies, 1):
                self._stop_if_cancelled()
                self._copy(i, c)
            self._stop_if_cancelled()
            self.progress(f"defining {self.plan.name}")
            self.pool.call(self.plan.host, lambda conn: conn.defineXML(self.plan.xml))
            self.defined = True
        except Refused as e:
            self.undo()
            raise Refused(f"{e}; {self.cleanup_note()}") from None
        except Exception as e:
            self.undo()
            raise Failed(f"{error_text(e)}; {self.cleanup_note()}") from e
        except BaseException:
            self.undo()
            raise
        linked = sum(c.linked for c in self.plan.copies)
        what = f"{linked} overlay(s)" if linked else f"{len(self.plan.copies)} disk(s) copied"
        shared = f", {len(self.plan.shared)} shared" if self.plan.shared else ""
        if self.plan.flattened:
            shared += f", {', '.join(self.plan.flattened)} flattened from an overlay"
        return f"cloned from {self.plan.source.name} ({what}{shared}) in {time.monotonic() - started:.1f}s"

    def _stop_if_cancelled(self) -> None:
        if cancelled(self.progress):
            raise Refused("cancelled")

    def _copy(self, i: int, c: Copy) -> None:
        n = len(self.plan.copies)
        verb = "making overlay" if c.linked else "copying disk"
        self.progress(
            f"{verb} {i} of {n} for {self.plan.name}: {c.target}, {size(c.allocation // 1024)} in pool {c.pool}"
        )
        xml = volume_xml(c)

        def create(conn: libvirt.virConnect) -> None:
            p = conn.storagePoolLookupByName(c.pool)
            if c.linked:
                p.createXML(xml, 0)
            else:
                p.createXMLFrom(xml, conn.storageVolLookupByPath(c.source_path), 0)

        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(c, done), daemon=True)
        ticker.start()
        try:
            self.made.append((c.pool, c.volume))  # registered first: a half-made volume is removed too
            self.pool.call(self.plan.host, create, COPY_TIMEOUT)
        finally:
            done.set()

    def _tick(self, c: Copy, done: threading.Event) -> None:
        started = time.monotonic()
        while not done.wait(TICK):
            try:
                got = self.pool.call(
                    self.plan.host,
                    lambda conn: conn.storagePoolLookupByName(c.pool).storageVolLookupByName(c.volume).info()[2],
                )
            except Exception:
                got = 0
            share = f" ({100 * got // c.allocation}%)" if c.allocation and got else ""
            took = time.monotonic() - started
            self.progress(
                f"still copying {c.target} for {self.plan.name}: {size(got // 1024)}{share} after {took:.0f}s"
            )

    def cleanup_note(self) -> str:
        if self.left:
            return f"could not remove {', '.join(self.left)}: remove by hand"
        return "what was made so far was removed" if self.made or self.defined else "nothing was made"

    def undo(self) -> None:
        """Remove the domain (if defined) and every volume made; each step on its own, so one failure stops none."""
        if self.defined:
            try:
                self.pool.call(self.plan.host, lambda conn: conn.lookupByUUIDString(self.plan.uuid).undefine())
            except Exception:
                self.left.append(f"domain {self.plan.name} ({self.plan.uuid})")
        for pool_name, volume in reversed(self.made):
            try:
                self.pool.call(self.plan.host, lambda conn, p=pool_name, v=volume: _delete(conn, p, v))
            except Exception:
                self.left.append(f"volume {pool_name}/{volume}")


def _delete(conn: libvirt.virConnect, pool: str, volume: str) -> None:
    """Delete a volume we registered; one that never came to be (its create failed) is already gone."""
    try:
        vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return
        raise
    vol.delete(0)


def fresh_uuid() -> str:
    return str(uuidlib.uuid4())
