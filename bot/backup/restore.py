"""Restore: define a VM again from a backup set, or a copy of it under a new name.

Plain restore brings back the same name and UUID, and is refused while a VM
with that UUID or name still exists on the host (nothing is ever overwritten).
``--as NEW`` gives a new name, a fresh UUID (checked against every host),
new MAC addresses (libvirt picks them), new NVRAM/TPM state (both are keyed
by name/UUID, and the NVRAM path is dropped so libvirt makes a new one), and
new volumes named by the new UUID in the pools of the original disks: never
the original's disks. Every definition passes the allowlist in
``bot.hypervisor.xmlcheck`` before ``defineXML``.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from bot.backup import diskbackup, qcow2
from bot.backup.catalog import Entry
from bot.backup.files import Store, sha256_file
from bot.hypervisor import xmlcheck

DiskData = dict[int, tuple[str, str]]  # disk index -> (file to upload, its format)
BAD_NAME = re.compile(r"[/\x00-\x1f\x7f]")


class RestoreRefused(Exception):
    """The restore cannot go ahead; the message says why and what would work."""


@dataclass
class NewVolume:
    """A volume to create for ``--as``: in the pool of the original disk, named by the new UUID."""

    pool: str
    name: str
    capacity: int
    fmt: str
    disk_index: int
    data: str | None = None  # the stored disk file to upload (disk backups); None: a new empty volume


@dataclass
class Plan:
    entry: Entry
    name: str
    uuid: str
    xml: ET.Element
    as_new: bool
    volumes: list[NewVolume] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the restore changed that the reply must say

    def preview(self) -> str:
        if not self.as_new:
            disks = f" and put back {len(self.volumes)} disk(s)" if self.volumes else ""
            return f"define {self.entry.host}/{self.name} again{disks} from backup {self.entry.id}"
        vols = f", {len(self.volumes)} new volume(s)" if self.volumes else ""
        return (
            f"define {self.entry.host}/{self.name} (new UUID {self.uuid}) from backup {self.entry.id} "
            f"of {self.entry.vm_name}{vols}"
        )


def check_new_name(name: str) -> None:
    if not name.strip() or len(name) > 200 or BAD_NAME.search(name):
        raise RestoreRefused(f"{name!r} cannot be a VM name here (no '/', newlines or control characters)")


def read_xml(store: Store, entry: Entry) -> ET.Element:
    """The set's XML, after checking it against the manifest's sha256 (a bad copy is never defined)."""
    files = [f for f in entry.files if f.get("role") == "xml"]
    if not files:
        raise RestoreRefused(f"backup {entry.id} holds no definition")
    path = store.file(entry.id, files[0]["name"])
    if not path.is_file() or sha256_file(path) != files[0]["sha256"]:
        raise RestoreRefused(f"backup {entry.id}: its XML does not match its checksum; run verify, use another")
    try:
        return ET.fromstring(path.read_text())
    except (ET.ParseError, UnicodeDecodeError):
        raise RestoreRefused(f"backup {entry.id}: its XML cannot be read") from None


def plan(
    conn: libvirt.virConnect, store: Store, entry: Entry, new_name: str | None, data: DiskData | None = None
) -> Plan:
    """Everything checked on the destination host; nothing changed yet (dry runs and approvals show this).

    ``data`` (disk index -> (file, format)) is what to put in each disk: by default the set's own files;
    an incremental backup passes the disks rebuilt from its chain."""
    root = read_xml(store, entry)
    if data is not None or not entry.parent:  # an increment's own files name its source: its chain is checked
        data = disk_files(store, entry) if data is None else data
        for path, fmt in data.values():
            stored_ok(path, fmt)
    data = disk_files(store, entry) if data is None else data
    if new_name is None:
        _refuse_existing(conn, entry.vm_uuid, entry.vm_name, entry)
        notes = local_consoles(root)
        return Plan(entry, entry.vm_name, entry.vm_uuid, root, False, _disks_back(conn, data, root), notes)
    check_new_name(new_name)
    _refuse_existing(conn, None, new_name, entry)
    new_uuid = str(uuidlib.uuid4())
    _set(root, "name", new_name)
    _set(root, "uuid", new_uuid)
    for parent in root.iter():
        for child in list(parent):
            if child.tag in ("mac", "genid") or (parent.tag == "os" and child.tag == "nvram"):
                if child.tag == "nvram" and child.get("template"):
                    child.text = None  # keep the template: libvirt makes a fresh NVRAM file for the new UUID
                    continue
                parent.remove(child)
    volumes = []
    for i, disk in enumerate(_disks(root)):
        path, fmt = data.get(i, (None, None))
        volumes.append(_new_volume(conn, disk, i, new_uuid, path, fmt))
    return Plan(entry, new_name, new_uuid, root, True, volumes, local_consoles(root))


LOCAL = frozenset({"127.0.0.1", "::1", "localhost"})


def local_consoles(root: ET.Element) -> list[str]:
    """A backup keeps no console password (libvirt leaves it out of the XML it hands out), so a graphics
    console that listened beyond this host would come back open: it comes back on 127.0.0.1 only, said."""
    notes = []
    for g in root.iterfind("devices/graphics"):
        listens = g.findall("listen")
        wide = [a for a in [g.get("listen"), *(x.get("address") for x in listens)] if a and a not in LOCAL]
        if g.get("passwd") is not None or not (wide or any(x.get("type") == "network" for x in listens)):
            continue
        for x in listens:
            g.remove(x)
        g.set("listen", "127.0.0.1")
        ET.SubElement(g, "listen", type="address", address="127.0.0.1")
        notes.append(
            f"its {g.get('type')} console listened on {', '.join(dict.fromkeys(wide)) or 'a network'}; "
            "a backup keeps no console password, so it listens on 127.0.0.1 only now: "
            "set a password before opening it wider"
        )
    return notes


def disk_files(store: Store, entry: Entry) -> DiskData:
    """The set's own disk files: index -> (path, format)."""
    found = [f for f in entry.files if f.get("role") == "disk" and f.get("extra")]
    return {int(f["extra"]["index"]): (str(store.file(entry.id, f["name"])), f["extra"]["format"]) for f in found}


def _disks_back(conn: libvirt.virConnect, data: DiskData, root: ET.Element) -> list[NewVolume]:
    """Plain restore of a disk backup: each disk goes back where it was, only if nothing is there now."""
    out = []
    for i, disk in enumerate(_disks(root)):
        if i not in data:
            continue
        source = disk.find("source")
        assert source is not None
        pool, capacity = _pool_of(conn, source)
        where = source.get("volume") or source.get("file") or source.get("dev") or "?"
        if capacity is not None:
            raise RestoreRefused(f"disk {i} ({where}) still exists; restore --as NEW, or remove it first")
        if pool is None:
            raise RestoreRefused(f"disk {i} ({where}) was not in a storage pool on this host")
        path, fmt = data[i]
        out.append(NewVolume(pool, os.path.basename(where), virtual_size(path, fmt), fmt, i, path))
    return out


def _set(root: ET.Element, tag: str, text: str) -> None:
    el = root.find(tag)
    if el is None:
        el = ET.SubElement(root, tag)
    el.text = text


def _disks(root: ET.Element) -> list[ET.Element]:
    return [
        d for d in root.iterfind("devices/disk") if d.get("device", "disk") == "disk" and d.find("source") is not None
    ]


def _refuse_existing(conn: libvirt.virConnect, uuid: str | None, name: str, entry: Entry) -> None:
    """Never restore over a VM: by UUID (the same machine) or by name (another machine with that name)."""
    names = {d.UUIDString(): d.name() for d in conn.listAllDomains()}
    if uuid in names:
        raise RestoreRefused(
            f"{entry.host}/{names[uuid]} (UUID {uuid}) still exists; restore refuses to overwrite it: "
            f"use --as NEW to restore a copy beside it"
        )
    if name in names.values():
        raise RestoreRefused(f"a VM named {name!r} already exists on {entry.host}; pick another name with --as")


def _new_volume(
    conn: libvirt.virConnect, disk: ET.Element, index: int, new_uuid: str, data: str | None, data_fmt: str | None
) -> NewVolume:
    """Where the copy's volume goes (the original disk's pool) and how big; the original need not exist."""
    source = disk.find("source")
    assert source is not None
    pool, capacity = _pool_of(conn, source)
    if pool is None:
        raise RestoreRefused(
            f"disk {index} of the backup is not in a storage pool on this host; "
            "a copy needs a pool to put its new volume in"
        )
    driver = disk.find("driver")
    fmt = data_fmt or (driver.get("type", "raw") if driver is not None else "raw")
    if capacity is None:
        capacity = virtual_size(data, fmt) if data else 0
    suffix = {"qcow2": ".qcow2", "raw": ".img"}.get(fmt, ".img")
    return NewVolume(pool, f"{new_uuid}-disk{index}{suffix}", capacity, fmt, index, data)


def _pool_of(conn: libvirt.virConnect, source: ET.Element) -> tuple[str | None, int | None]:
    """(pool name, capacity of the original volume if it still exists)."""
    try:
        if source.get("pool") and source.get("volume"):
            pool = conn.storagePoolLookupByName(source.get("pool"))
            try:
                return pool.name(), pool.storageVolLookupByName(source.get("volume")).info()[1]
            except libvirt.libvirtError:
                return pool.name(), None
        path = source.get("file") or source.get("dev") or ""
        try:
            vol = conn.storageVolLookupByPath(path)
            return vol.storagePoolLookupByVolume().name(), vol.info()[1]
        except libvirt.libvirtError:
            pass
        folder = os.path.dirname(path)
        for p in conn.listAllStoragePools():
            if ET.fromstring(p.XMLDesc(0)).findtext("target/path") == folder:
                return p.name(), None
    except libvirt.libvirtError:
        pass
    return None, None


def virtual_size(path: str, fmt: str) -> int:
    """The disk size a stored file holds: a raw file's length, or the size field of a qcow2 header."""
    if fmt not in ("raw", "qcow2"):
        raise RestoreRefused(f"a stored disk's format {fmt!r} is not raw or qcow2")
    return qcow2.virtual_size(path) if fmt == "qcow2" else os.path.getsize(path)


def stored_ok(path: str, fmt: str) -> None:
    """A stored disk is raw, or a qcow2 that names no backing or data file (QEMU would open that host file)."""
    if fmt not in ("raw", "qcow2"):
        raise RestoreRefused(f"a stored disk's format {fmt!r} is not raw or qcow2")
    if fmt == "qcow2":
        try:
            qcow2.standalone(path)
        except (qcow2.Qcow2Error, OSError) as e:
            raise RestoreRefused(f"a stored qcow2 disk {e}; it is not restored") from None


def check_uuid_unused(answers: dict[str, object], uuid: str) -> None:
    """``answers`` is host -> bool (UUID found) or an exception; an unreachable host cannot vouch, so refuse."""
    for host, found in answers.items():
        if isinstance(found, Exception):
            raise RestoreRefused(f"cannot check the new UUID {uuid} on {host} ({found}); nothing was defined")
        if found:
            raise RestoreRefused(f"the new UUID {uuid} is already used on {host}; try again")


def check_not_elsewhere(answers: dict[str, object], uuid: str, home: str) -> None:
    """A plain restore brings back host + UUID: refused when that UUID now lives on another host (the VM moved
    or was rebuilt there), or when a host cannot say (one UUID, one VM in the fleet; fail closed)."""
    for host, found in answers.items():
        if host == home:
            continue
        if isinstance(found, Exception):
            raise RestoreRefused(f"cannot check that UUID {uuid} is not on {host} ({found}); nothing was defined")
        if found:
            raise RestoreRefused(
                f"UUID {uuid} now lives on {host}: restoring it on {home} would make two VMs of one; "
                "use --as NEW for a copy"
            )


def uuid_used(conn: libvirt.virConnect, uuid: str) -> bool:
    try:
        conn.lookupByUUIDString(uuid)
        return True
    except libvirt.libvirtError:
        return False


def execute(conn: libvirt.virConnect, p: Plan, rules: xmlcheck.Rules, autostart: bool | None = None) -> str:
    """Create the new volumes, define, set autostart; undo the volumes if the definition fails."""
    xmlcheck.check(ET.tostring(p.xml, encoding="unicode"), rules)
    made: list[libvirt.virStorageVol] = []
    try:
        disks = _disks(p.xml)
        for v in p.volumes:
            if v.data:
                stored_ok(v.data, v.fmt)  # again, just before its bytes go to the host
            made.append(_create(conn, v))
            if v.data:
                diskbackup.upload(conn, made[-1], v.data)
            driver = disks[v.disk_index].find("driver")
            if driver is not None:
                driver.set("type", v.fmt)  # a live backup is stored as qcow2 whatever the original was
            if v.data:  # the data is the whole disk: libvirt must not look for (or follow) a backing chain
                for old in disks[v.disk_index].findall("backingStore"):
                    disks[v.disk_index].remove(old)
                ET.SubElement(disks[v.disk_index], "backingStore")
            source = disks[v.disk_index].find("source")
            assert source is not None
            source.attrib.clear()
            if disks[v.disk_index].get("type") == "volume":
                source.set("pool", v.pool)
                source.set("volume", v.name)
            else:
                source.set("file" if disks[v.disk_index].get("type", "file") == "file" else "dev", made[-1].path())
        text = ET.tostring(p.xml, encoding="unicode")
        xmlcheck.check(text, rules)  # again, with the new volumes' paths in place
        dom = conn.defineXML(text)
        if p.entry.autostart if autostart is None else autostart:
            dom.setAutostart(1)
    except BaseException:
        for vol in made:
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
        raise
    said = "autostart on" if p.entry.autostart else "autostart off"
    if not p.as_new and made:
        return (
            f"restored {p.name} and {len(made)} disk(s) from backup {p.entry.id} ({p.entry.created_at[:19]}Z); {said}"
        )
    if p.as_new:
        empty = sum(v.data is None for v in p.volumes)
        kind = "empty (a config backup holds no disk data)" if empty else "holding the backup's disk data"
        vols = f"; {len(made)} new volume(s) named by its UUID, {kind}"
        return f"restored as {p.name} (UUID {p.uuid}) from backup {p.entry.id}; {said}{vols if made else ''}"
    return f"restored {p.name} from backup {p.entry.id} ({p.entry.created_at[:19]}Z); {said}"


def _create(conn: libvirt.virConnect, v: NewVolume) -> libvirt.virStorageVol:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = v.name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(v.capacity)
    ET.SubElement(ET.SubElement(vol, "target"), "format", type=v.fmt)
    return conn.storagePoolLookupByName(v.pool).createXML(ET.tostring(vol, encoding="unicode"), 0)
