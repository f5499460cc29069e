"""One disk backup of one VM, start to catalog: its own libvirt connection, cold or live by its state now.

The config goes into the same set, so a disk backup restores on its own. A
failure or Cancel at any point abandons the set's temporary folder: only a
complete, hashed, renamed set is ever cataloged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import libvirt

from bot.backup import configbackup, diskbackup, inpool
from bot.backup.catalog import Catalog, Entry
from bot.backup.files import BackupError, SetWriter, Store
from bot.backup.jobs import Jobs
from bot.config import Config
from bot.hypervisor import links
from bot.hypervisor.fleet import VmRef
from bot.hypervisor.lifecycle import Progress, Refused, cancelled

MAX_CHAIN = 7  # a full backup and at most six increments: a restore reads the whole chain


class DiskBackups:
    def __init__(self, config: Config, catalog: Catalog, jobs: Jobs) -> None:
        self.config, self.catalog, self.jobs = config, catalog, jobs

    def parent_for(self, ref: VmRef, dom: libvirt.virDomain) -> Entry | None:
        """The backup an incremental one may build on: the VM's newest disk backup, if it is good, made a
        checkpoint that still exists on the domain, and its chain is short. Anything else means a full copy
        (a cold copy, a failed checkpoint, an undefine or a revert break the chain)."""
        disks = [e for e in self.catalog.entries(uuid=ref.uuid, host=ref.host) if e.kind == "disk"]
        if not disks or not disks[0].good or not disks[0].checkpoint:
            return None
        try:
            chain = self.catalog.chain(disks[0])
            dom.checkpointLookupByName(disks[0].checkpoint)
        except (BackupError, libvirt.libvirtError):
            return None
        return disks[0] if len(chain) < MAX_CHAIN and all(e.good for e in chain) else None

    def abandon(self, conn: libvirt.virConnect, writer: SetWriter) -> None:
        """A set that was not renamed into place is no backup: its folder goes, and so do volumes it kept in a
        pool (a renamed set stays: its manifest names them and reindex catalogs it)."""
        if writer.tmp.exists():
            kept = [f.name for f in writer.files if f.extra and f.extra.get("pool")]
            if kept:
                inpool.delete(conn, self.config.backup_staging_pool, kept)
        writer.abandon()

    def take(self, ref: VmRef, store: Store, progress: Progress, warn: Callable[[str], None]) -> Entry:
        """One disk backup; ``warn`` gets what the requester must read even when the backup succeeds."""
        conn = links.own(self.config.hosts[ref.host])  # not the pool's: a long job must not hold its worker
        writer = store.writer()
        job: list[threading.Event] = []

        def stop() -> bool:
            return cancelled(progress) or any(e.is_set() for e in job)

        def on_start(volumes: list[str]) -> None:
            job.append(self.jobs.start(writer.id, ref.host, ref.uuid, self.config.backup_staging_pool, volumes))

        in_pool = inpool.kept(ref.host, self.config.backup_disk_copies)
        pool = self.config.backup_staging_pool

        def keep(into: libvirt.virStoragePool, name: str, disk: diskbackup.Disk) -> None:
            progress(f"checksumming disk {disk.dev} in pool {pool}")
            inpool.record(conn, writer, into, name, disk, "qcow2", stop)

        try:
            dom = conn.lookupByUUIDString(ref.uuid)
            info = configbackup.write_config(writer, dom, ref.host)
            if dom.isActive():
                prev = None if in_pool else self.parent_for(ref, dom)  # kept in the pool: full copies only
                consistency, base, made = diskbackup.live(
                    conn, dom, writer, ref.uuid, pool, progress, stop, on_start,
                    prev.checkpoint if prev else None, None if in_pool else f"vmbot-{writer.id}",
                    keep if in_pool else None, warn,
                )  # fmt: skip
                parent = prev.id if prev and base else ""
                entry = configbackup.finish(writer, self.catalog, info, "disk", consistency, parent, made or "")
                diskbackup.drop_checkpoints(dom, keep=made)
                return entry
            progress(f"copying the disks of {ref.name} (shut off){f' within pool {pool}' if in_pool else ''}")
            if in_pool:
                inpool.cold(conn, dom, writer, ref.uuid, pool, stop, on_start)
            else:
                diskbackup.cold(conn, dom, writer, ref.uuid, stop)  # no checkpoint: the next live one is full
            return configbackup.finish(writer, self.catalog, info, "disk", "offline")
        except diskbackup.DiskRefused as e:
            self.abandon(conn, writer)
            raise Refused(str(e)) from None
        except diskbackup.Interrupted as e:
            self.abandon(conn, writer)
            raise BackupError(f"backup interrupted: {e}; nothing was cataloged") from None
        except BaseException:
            self.abandon(conn, writer)
            raise
        finally:
            if job:
                self.jobs.end(writer.id, ref.host, ref.uuid)
            conn.close()
