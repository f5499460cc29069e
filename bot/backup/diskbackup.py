"""Disk backups: a shut-off VM's volumes downloaded as they are, a running VM's through a push backup job.

Both travel over libvirt (so ``qemu+ssh://`` hosts work like local ones) as
sparse streams: holes stay holes in the store. A running VM's disks are copied
by QEMU itself (``backupBegin``, push mode) into volumes of the configured
staging pool on its host, without pausing the guest; those volumes are then
downloaded and deleted. The job runs on its own libvirt connection (the pool's
per-call deadline is for quick calls), reports progress from the job's stats,
stops when cancelled, and is recorded in ``backup_jobs`` so a bot that died
half-way has its job aborted and its staging volumes deleted at the next start.
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from bot.backup import sparse
from bot.backup.digest import KIND
from bot.backup.files import SetWriter
from bot.backup.quiesce import freeze, thaw
from bot.hypervisor.streams import aborted_on_error

log = logging.getLogger(__name__)
UNTHAWED = (
    "WARNING: the guest agent did not confirm the thaw in time: the guest's filesystems may still be frozen "
    "(its writes wait) until the agent answers; check the guest"
)

Say = Callable[[str], None]
Cancelled = Callable[[], bool]
JOB_BACKUP = getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_BACKUP", 9)


class DiskRefused(Exception):
    """This disk cannot be backed up (not a pool volume, an unknown format); nothing was written."""


class Interrupted(Exception):
    """The job ended before it finished (cancelled, the VM stopped, QEMU failed); nothing is cataloged."""


@dataclass(frozen=True)
class Disk:
    index: int
    dev: str  # target dev (vda): the name the backup job uses
    fmt: str  # qcow2 | raw
    path: str

    def file_name(self, set_id: str, uuid: str) -> str:
        return f"{set_id}-{uuid}-disk{self.index}.{'qcow2' if self.fmt == 'qcow2' else 'img'}"


def disks_of(conn: libvirt.virConnect, domain_xml: str) -> list[Disk]:
    """Every disk (not CD-ROM) as a pool volume on this host; anything else is refused with its target."""
    out = []
    for i, el in enumerate(d for d in ET.fromstring(domain_xml).iterfind("devices/disk") if d.get("device") == "disk"):
        source, target, driver = el.find("source"), el.find("target"), el.find("driver")
        dev = target.get("dev", f"disk{i}") if target is not None else f"disk{i}"
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        if fmt not in ("qcow2", "raw") or source is None:
            raise DiskRefused(f"disk {dev} ({fmt}) cannot be backed up: qcow2 or raw pool volumes only")
        try:
            if source.get("pool"):
                vol = conn.storagePoolLookupByName(source.get("pool")).storageVolLookupByName(source.get("volume"))
            else:
                vol = conn.storageVolLookupByPath(source.get("file") or source.get("dev") or "")
        except libvirt.libvirtError:
            raise DiskRefused(f"disk {dev} is not a volume of a storage pool on this host") from None
        out.append(Disk(i, dev, fmt, vol.path()))
    return out


def download(
    conn: libvirt.virConnect, vol: libvirt.virStorageVol, writer: SetWriter, name: str, stop: Cancelled
) -> dict:
    """Stream a volume into a new file of the set; holes are skipped, so the copy stays sparse.

    The checksum is computed on the way (``bot.backup.digest``: holes cost nothing): one pass, not two."""
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    try:
        with aborted_on_error(stream), writer.open(name) as f:
            digest = sparse.receive(stream, f.fileno(), stop)
            stream.finish()
    except sparse.StreamStopped as e:
        raise Interrupted(str(e)) from None
    st = os.stat(writer.path(name))
    return {"allocated": st.st_blocks * 512, "sha256": digest}


def cold(conn: libvirt.virConnect, dom: libvirt.virDomain, writer: SetWriter, uuid: str, stop: Cancelled) -> None:
    """A shut-off VM: each volume as it is on the host (qcow2 stays qcow2, raw stays raw)."""
    for disk in disks_of(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
        name = disk.file_name(writer.id, uuid)
        extra = download(conn, conn.storageVolLookupByPath(disk.path), writer, name, stop)
        digest = extra.pop("sha256")
        extra = {"dev": disk.dev, "format": disk.fmt, "index": disk.index, **extra}
        writer.record(name, "disk", extra, digest, KIND)


def staging_names(set_id: str, uuid: str, disks: list[Disk]) -> list[str]:
    return [f"vmbot-staging-{d.file_name(set_id, uuid)}" for d in disks]


def checkpoint_xml(name: str, disks: list[Disk]) -> str:
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    holder = ET.SubElement(root, "disks")
    for disk in disks:
        ET.SubElement(holder, "disk", name=disk.dev, checkpoint="bitmap")
    return ET.tostring(root, encoding="unicode")


def backup_xml(disks: list[Disk], staging_dir: str, names: list[str], since: str | None = None) -> str:
    root = ET.Element("domainbackup", mode="push")
    if since:
        ET.SubElement(root, "incremental").text = since  # only what changed since that checkpoint
    holder = ET.SubElement(root, "disks")
    for disk, name in zip(disks, names, strict=True):
        el = ET.SubElement(holder, "disk", name=disk.dev, type="file")
        ET.SubElement(el, "target", file=f"{staging_dir}/{name}")
        ET.SubElement(el, "driver", type="qcow2")  # the staging copy is qcow2: sparse on any filesystem
    return ET.tostring(root, encoding="unicode")


def start_job(
    dom: libvirt.virDomain,
    disks: list[Disk],
    staging_dir: str,
    names: list[str],
    since: str | None = None,
    checkpoint: str | None = None,
    warn: Say = lambda _m: None,
) -> tuple[str, str | None, str | None]:
    """Begin the push job with the filesystems frozen only around its start.

    Tries incremental (since the last checkpoint) with a new checkpoint, then a
    full one with a checkpoint, then a plain full one (a qcow2 v2 disk cannot hold
    the bitmap): returns (consistency, the checkpoint it built on, the one it made).
    """
    attempts = list(dict.fromkeys([(since, checkpoint), (None, checkpoint), (None, None)]))
    frozen = freeze(dom)
    try:
        for i, (base, made) in enumerate(attempts):
            try:
                dom.backupBegin(
                    backup_xml(disks, staging_dir, names, base), checkpoint_xml(made, disks) if made else None, 0
                )
                break
            except libvirt.libvirtError:
                if i == len(attempts) - 1:
                    raise
    finally:
        if frozen is not None and not thaw(dom):
            log.warning("%s: %s", dom.name(), UNTHAWED)
            warn(UNTHAWED)
    return ("application" if frozen else "crash"), base, made


def drop_checkpoints(dom: libvirt.virDomain, keep: str | None) -> None:
    """Only the newest vmbot checkpoint is needed (the next backup builds on it); each costs a bitmap."""
    try:
        found = dom.listAllCheckpoints(0)
    except libvirt.libvirtError:
        return
    for cp in found:
        if cp.getName().startswith("vmbot-") and cp.getName() != keep:
            try:
                cp.delete(0)
            except libvirt.libvirtError:
                pass


def wait_job(dom: libvirt.virDomain, say: Say, stop: Cancelled, every: float = 0.25) -> None:
    """Poll the job's stats until it ends; progress every few seconds; Cancel aborts it."""
    next_note = time.monotonic() + 2
    while True:
        try:
            stats = dom.jobStats()
        except libvirt.libvirtError as e:
            raise Interrupted(f"the VM stopped during the backup ({e.get_error_message()})") from None
        if stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
            break
        if stop():
            abort(dom)
            raise Interrupted("cancelled; the backup job was aborted")
        if time.monotonic() >= next_note and stats.get("disk_total"):
            say(f"copying disks: {100 * stats.get('disk_processed', 0) // stats['disk_total']}%")
            next_note += 2
        time.sleep(every)
    try:
        done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        done = {}
    if not done.get("success", done.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED):
        raise Interrupted(f"the backup job did not complete ({done.get('errmsg', 'the VM stopped or QEMU failed')})")


def abort(dom: libvirt.virDomain, wait: float = 15.0) -> None:
    """Abort the domain's backup job and wait (bounded) until it is gone.

    Why wait: libvirt returns from abortJob while QEMU is still cancelling the
    block jobs; a caller that looks right after (start-up recovery, a destroy
    after a cancel) would still see the job running."""
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if dom.jobStats().get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
                return
        except libvirt.libvirtError:
            return  # the domain stopped: its job went with it
        time.sleep(0.1)


def live(
    conn: libvirt.virConnect,
    dom: libvirt.virDomain,
    writer: SetWriter,
    uuid: str,
    pool_name: str,
    say: Say,
    stop: Cancelled,
    on_start: Callable[[list[str]], None],
    since: str | None = None,
    checkpoint: str | None = None,
    keep: Callable[[libvirt.virStoragePool, str, Disk], None] | None = None,
    warn: Say = lambda _m: None,
) -> tuple[str, str | None, str | None]:
    """A running VM: push job into the staging pool, then download and delete.

    With ``keep`` (disk copies kept in the pool: bot.backup.inpool) the job writes the kept volumes
    themselves, ``keep`` lists each in the set, and they stay; on any failure they are deleted.
    Returns (consistency, the checkpoint it built on or None for a full copy, the checkpoint it made)."""
    disks = disks_of(conn, dom.XMLDesc(0))
    pool = conn.storagePoolLookupByName(pool_name)
    staging_dir = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
    names = staging_names(writer.id, uuid, disks) if keep is None else kept_names(writer.id, uuid, disks)
    on_start(names)
    made: str | None = None
    done = False
    try:
        consistency, base, made = start_job(dom, disks, staging_dir, names, since, checkpoint, warn)
        say(f"live {'incremental' if base else 'full'} backup job started; the guest keeps running")
        wait_job(dom, say, stop)
        pool.refresh(0)
        for disk, staged in zip(disks, names, strict=True):
            if keep is not None:
                keep(pool, staged, disk)
                continue
            name = disk.file_name(writer.id, uuid)
            say(f"downloading disk {disk.dev}")
            extra = download(conn, pool.storageVolLookupByName(staged), writer, name, stop)
            digest = extra.pop("sha256")
            extra = {"dev": disk.dev, "format": "qcow2", "index": disk.index, **extra}
            writer.record(name, "disk", extra, digest, KIND)
        done = True
    except BaseException:
        if made:  # a checkpoint nothing in the catalog builds on would only cost a bitmap
            drop_checkpoints(dom, keep=since)
        raise
    finally:
        if keep is None or not done:
            delete_staged(conn, pool_name, names)
    return consistency, base, made


def kept_names(set_id: str, uuid: str, disks: list[Disk]) -> list[str]:
    """Volumes that stay in the pool as the backup (bot.backup.inpool): catalog id + UUID, written as qcow2."""
    return [f"vmbot-backup-{set_id}-{uuid}-disk{d.index}.qcow2" for d in disks]


def delete_staged(conn: libvirt.virConnect, pool_name: str, names: list[str]) -> None:
    try:
        pool = conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
    except libvirt.libvirtError:
        return
    for name in names:
        try:
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError:
            pass


def upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: str) -> None:
    """Send a stored disk file into a volume as a sparse stream (holes found with SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with aborted_on_error(conn.newStream(0)) as stream:
            vol.upload(stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            send, skip = (lambda _s, n, f: os.read(f, n)), (lambda _s, n, f: os.lseek(f, n, os.SEEK_CUR))
            stream.sparseSendAll(send, _section, skip, fd)
            stream.finish()
    finally:
        os.close(fd)


def _section(_s: libvirt.virStream, fd: int) -> list:
    """[in data?, length of this section] from the current offset: what sparseSendAll asks."""
    pos, size = os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size
    if pos >= size:
        return [True, 0]
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:  # ENXIO: only a hole remains
        data = size
    if data > pos:
        os.lseek(fd, pos, os.SEEK_SET)
        return [False, data - pos]
    hole = os.lseek(fd, pos, os.SEEK_HOLE)
    os.lseek(fd, pos, os.SEEK_SET)
    return [True, hole - pos]
