"""One disk backup of one VM, start to catalog: its own libvirt connection, cold or live by its state now.

The config goes into the same set, so a disk backup restores on its own. A
failure or Cancel at any point abandons the set's temporary folder: only a
complete, hashed, renamed set is ever cataloged.
"""

from __future__ import annotations

import threading

import libvirt

from bot.backup import configbackup, diskbackup
from bot.backup.catalog import Catalog, Entry
from bot.backup.files import BackupError, Store
from bot.backup.jobs import Jobs
from bot.config import Config
from bot.hypervisor.fleet import VmRef
from bot.hypervisor.lifecycle import Progress, Refused, cancelled


class DiskBackups:
    def __init__(self, config: Config, catalog: Catalog, jobs: Jobs) -> None:
        self.config, self.catalog, self.jobs = config, catalog, jobs

    def take(self, ref: VmRef, store: Store, progress: Progress) -> Entry:
        conn = libvirt.open(self.config.hosts[ref.host])  # not the pool's: a long job must not hold its worker
        writer = store.writer()
        job: list[threading.Event] = []

        def stop() -> bool:
            return cancelled(progress) or any(e.is_set() for e in job)

        def on_start(volumes: list[str]) -> None:
            job.append(self.jobs.start(writer.id, ref.host, ref.uuid, self.config.backup_staging_pool, volumes))

        try:
            dom = conn.lookupByUUIDString(ref.uuid)
            info = configbackup.write_config(writer, dom, ref.host)
            if dom.isActive():
                pool = self.config.backup_staging_pool
                consistency = diskbackup.live(conn, dom, writer, ref.uuid, pool, progress, stop, on_start)
            else:
                progress(f"copying the disks of {ref.name} (shut off)")
                diskbackup.cold(conn, dom, writer, ref.uuid, stop)
                consistency = "offline"
            return configbackup.finish(writer, self.catalog, info, "disk", consistency)
        except diskbackup.DiskRefused as e:
            writer.abandon()
            raise Refused(str(e)) from None
        except diskbackup.Interrupted as e:
            writer.abandon()
            raise BackupError(f"backup interrupted: {e}; nothing was cataloged") from None
        except BaseException:
            writer.abandon()
            raise
        finally:
            if job:
                self.jobs.end(writer.id, ref.host, ref.uuid)
            conn.close()
