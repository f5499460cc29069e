"""Disk copies kept in the host's backup pool (``[backups] disk_copies = { HOST = "pool" }``).

Why: a host with a big backup pool of its own need not send every disk over
the network to the bot's machine. The set's folder in ``[backups] dir`` still
holds the definition, the facts and the manifest; each disk file of the set is
a volume of ``[backups] staging_pool`` on the VM's host, named by catalog id
and UUID (never the VM name), and the manifest says so (``extra.pool``).

Everything still goes through libvirt: the copy of a shut-off VM's volume is
made on the host (``storageVolCreateXMLFrom``), a running VM's by its push job;
the checksum of each copy is computed from a download stream of it (hashed,
not written), both at backup time and by verify; restore streams the copy back
through the bot into a private temporary file, checking its checksum on the
way, and uploads it as for any stored disk; prune deletes the volume. Copies
kept in the pool are full copies (no increments): each one restores alone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt

from bot.backup import diskbackup, sparse
from bot.backup.catalog import Entry
from bot.backup.digest import KIND, BlockHasher
from bot.backup.files import TMP, SetWriter, Store, Stored, StoreError, private_dir
from bot.backup.restore import DiskData
from bot.hypervisor import links
from bot.hypervisor.streams import aborted_on_error

POOL = "pool"
WANT = 256 * 1024
HEAD = 1 << 20  # what restore's plan reads of a stored disk (the qcow2 header and its extensions)


def kept(host: str, disk_copies: dict[str, str]) -> bool:
    return disk_copies.get(host, "download") == POOL


def pool_files(entry: Entry) -> list[dict]:
    """The set's files that live in a pool on its host, not in the store."""
    return [f for f in entry.files if isinstance(f.get("extra"), dict) and f["extra"].get("pool")]


def owned(entry: Entry, f: dict) -> bool:
    """Does the file name a volume this backup made? Only those are ever read as it, or deleted with it: a
    manifest that names another volume (a VM's own disk) must not make prune delete it."""
    ours = rf"vmbot-backup-{re.escape(entry.id)}-{re.escape(entry.vm_uuid)}-disk[0-9]+\.(qcow2|img)"
    return re.fullmatch(ours, str(f.get("name", ""))) is not None


def volume_names(set_id: str, uuid: str, disks: list[diskbackup.Disk]) -> list[str]:
    """A cold copy keeps its format; named by catalog id and UUID, never by the VM's name."""
    return [f"vmbot-backup-{d.file_name(set_id, uuid)}" for d in disks]


def stream_digest(conn: libvirt.virConnect, vol: libvirt.virStorageVol, stop: Callable[[], bool]) -> tuple[str, int]:
    """(block digest, length) of a volume as libvirt streams it; nothing is written anywhere."""
    hasher, length = BlockHasher(), 0
    with aborted_on_error(conn.newStream(0)) as stream:
        vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        while True:
            if stop():
                raise diskbackup.Interrupted("cancelled")
            got = stream.recvFlags(WANT, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
            if got == -3:
                hole = stream.recvHole()
                hasher.hole(hole)
                length += hole
            elif isinstance(got, int):
                raise libvirt.libvirtError(f"stream receive returned {got}")
            elif not got:
                break
            else:
                hasher.data(got)
                length += len(got)
        stream.finish()
    return hasher.hexdigest(), length


def record(
    conn: libvirt.virConnect, writer: SetWriter, pool: libvirt.virStoragePool, name: str, disk: diskbackup.Disk,
    fmt: str, stop: Callable[[], bool],
) -> None:  # fmt: skip
    """List a kept volume in the set, with the checksum of what the pool now holds."""
    vol = pool.storageVolLookupByName(name)
    digest, size = stream_digest(conn, vol, stop)
    extra = {"dev": disk.dev, "format": fmt, "index": disk.index, "allocated": vol.info()[2], "pool": pool.name()}
    writer.listed(Stored(name, "disk", size, digest, extra, KIND))


def cold(
    conn: libvirt.virConnect, dom: libvirt.virDomain, writer: SetWriter, uuid: str, pool_name: str,
    stop: Callable[[], bool], on_start: Callable[[list[str]], None],
) -> None:  # fmt: skip
    """A shut-off VM: each volume copied on the host into the pool (holes stay holes), then hashed by stream."""
    disks = diskbackup.disks_of(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    names = volume_names(writer.id, uuid, disks)
    on_start(names)  # recorded first: a bot that dies during the copy has the volume deleted at its next start
    pool = conn.storagePoolLookupByName(pool_name)
    try:
        for disk, name in zip(disks, names, strict=True):
            source = conn.storageVolLookupByPath(disk.path)
            pool.createXMLFrom(_volume_xml(name, disk.fmt, source.info()[1]), source, 0)
            record(conn, writer, pool, name, disk, disk.fmt, stop)
    except BaseException:
        delete(conn, pool_name, names)
        raise


def _volume_xml(name: str, fmt: str, capacity: int) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(ET.SubElement(vol, "target"), "format", type=fmt)
    return ET.tostring(vol, encoding="unicode")


def delete(conn: libvirt.virConnect, pool_name: str, names: list[str]) -> None:
    diskbackup.delete_staged(conn, pool_name, names)


def remove(conn: libvirt.virConnect, entry: Entry) -> None:
    """Prune: delete the set's volumes; a volume already gone is fine, a host that fails raises StoreError
    (the set stays cataloged, so nothing is left in a pool that no catalog row names)."""
    for f in pool_files(entry):
        if not owned(entry, f):
            continue  # not a volume this backup made: never deleted in its name
        try:
            pool = conn.storagePoolLookupByName(f["extra"]["pool"])
            pool.refresh(0)
            vol = pool.storageVolLookupByName(str(f["name"]))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                continue
            raise StoreError(
                f"backup {entry.id}: cannot reach its volume {f['name']}: {e.get_error_message()}"
            ) from None
        try:
            vol.delete(0)
        except libvirt.libvirtError as e:
            raise StoreError(
                f"backup {entry.id}: cannot delete its volume {f['name']}: {e.get_error_message()}"
            ) from None


def check(conn: libvirt.virConnect, entry: Entry) -> tuple[list[str], list[str]]:
    """Verify the set's kept volumes: (what does not match, what could not be read now).

    A missing volume or another checksum is a failure (the backup is bad); a read that fails for another
    reason (the host, the stream) is only "not checked": it says nothing about the copy."""
    failures, unknown = [], []
    for f in pool_files(entry):
        name = str(f["name"])
        if not owned(entry, f):
            failures.append(f"{name!r} is not a volume this backup made")
            continue
        try:
            pool = conn.storagePoolLookupByName(f["extra"]["pool"])
            pool.refresh(0)
            vol = pool.storageVolLookupByName(name)
        except libvirt.libvirtError as e:
            bad = e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL
            (failures if bad else unknown).append(f"{name} {'is missing from its pool' if bad else 'not reachable'}")
            continue
        try:
            digest, size = stream_digest(conn, vol, lambda: False)
        except libvirt.libvirtError as e:
            unknown.append(f"{name} could not be read through libvirt ({e.get_error_message()})")
            continue
        if size != int(f["size"]):
            failures.append(f"{name} has {size} bytes, the manifest says {f['size']}")
        elif f.get("checksum") != KIND or digest != f["sha256"]:
            failures.append(f"{name} does not match its sha256")
    return failures, unknown


@contextmanager
def fetched(store: Store, entry: Entry, uri: str, whole: bool = True) -> Iterator[DiskData | None]:
    """The set's kept volumes as private temporary files (removed afterwards; swept if the bot dies).

    ``whole``: the full copy, its checksum checked on the way (a restore); else only the first MiB at the
    right length, for restore's plan (the qcow2 header and the size) without moving the whole disk."""
    files = pool_files(entry)
    if not files:
        yield None
        return
    conn = links.own(uri)
    tmp = private_dir(store.root / f"{TMP}fetch-{entry.id}-{secrets.token_hex(3)}")
    try:
        yield {int(f["extra"]["index"]): (_fetch(conn, entry, f, tmp, whole), str(f["extra"]["format"])) for f in files}
    finally:
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(conn: libvirt.virConnect, entry: Entry, f: dict, tmp: Path, whole: bool) -> str:
    if not owned(entry, f):
        raise StoreError(f"backup {entry.id}: {f['name']!r} is not a volume this backup made")
    try:
        vol = conn.storagePoolLookupByName(f["extra"]["pool"]).storageVolLookupByName(str(f["name"]))
    except libvirt.libvirtError as e:
        raise StoreError(
            f"backup {entry.id}: its volume {f['name']} cannot be found ({e.get_error_message()})"
        ) from None
    path = str(tmp / f"disk{int(f['extra']['index'])}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if whole:
            with aborted_on_error(conn.newStream(0)) as stream:
                vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
                digest = sparse.receive(stream, fd, lambda: False)
                stream.finish()
            if digest != f["sha256"] or os.fstat(fd).st_size != int(f["size"]):
                raise StoreError(f"backup {entry.id}: {f['name']} does not match its sha256; run verify")
        else:
            with aborted_on_error(conn.newStream(0)) as stream:
                vol.download(stream, 0, min(HEAD, int(f["size"])), 0)
                at = 0
                while got := stream.recv(WANT):
                    if isinstance(got, int):
                        raise libvirt.libvirtError(f"stream receive returned {got}")
                    at += os.pwrite(fd, got, at)
                stream.finish()
            os.ftruncate(fd, int(f["size"]))
    finally:
        os.close(fd)
    return path
