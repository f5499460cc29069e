"""Live disk-backup jobs in flight: recorded so a dead bot's job is found and aborted at the next start,
and so a shutdown or destroy of the VM can end the backup first instead of waiting behind it for hours.

A row names the host, the VM's UUID, the staging volumes and the owning
process (boot id, pid, start time, as VM locks do). At start-up every row
whose owner is gone is cleaned: the domain's job aborted, its filesystems
thawed, the staging volumes deleted, the row removed. In this process, a
running job also has a cancel Event that ``abort_for`` sets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import libvirt

from bot.backup import diskbackup, quiesce
from bot.store.db import Store as Db
from bot.store.owner import Owner, alive

COLUMNS = {"set_id": str, "host": str, "uuid": str, "pool": str, "volumes": str, "pid": int, "boot": str}
COLUMNS |= {"started": str}
KEPT = "vmbot-backup-"  # volumes that are the backup (bot.backup.inpool), not a staging copy
Call = Callable[[str, Callable[[libvirt.virConnect], object]], object]


class Jobs:
    def __init__(self, db: Db) -> None:
        self.db = db
        db.create("backup_jobs", COLUMNS, "set_id")
        self.running: dict[tuple[str, str], tuple[threading.Event, threading.Event]] = {}  # -> (cancel, ended)
        self.lock = threading.Lock()

    def start(self, set_id: str, host: str, uuid: str, pool: str, volumes: list[str]) -> threading.Event:
        me = Owner.me()
        self.db.run(
            "INSERT OR REPLACE INTO backup_jobs (set_id, host, uuid, pool, volumes, pid, boot, started)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [set_id, host, uuid, pool, json.dumps(volumes), me.pid, me.boot, me.started],
        )
        cancel = threading.Event()
        with self.lock:
            self.running[(host, uuid)] = (cancel, threading.Event())
        return cancel

    def end(self, set_id: str, host: str, uuid: str) -> None:
        self.db.run("DELETE FROM backup_jobs WHERE set_id = ?", [set_id])
        with self.lock:
            found = self.running.pop((host, uuid), None)
        if found:
            found[1].set()

    def abort_for(self, host: str, uuid: str, wait: float = 60.0) -> bool:
        """Cancel this process's live backup of the VM and wait until it has let go; False if none ran."""
        with self.lock:
            found = self.running.get((host, uuid))
        if found is None:
            return False
        found[0].set()
        found[1].wait(wait)
        return True

    def recover(self, call: Call, committed: Callable[[str], bool] = lambda _set_id: False) -> list[str]:
        """At start-up: abort jobs whose owner died, thaw, delete their staging volumes; returns their set ids.

        ``committed(set_id)``: the set was renamed into place before the bot died (it is a backup, whose
        manifest names the volumes it kept in the pool): those volumes stay."""
        done = []
        for row in self.db.dicts("SELECT * FROM backup_jobs"):
            if alive(Owner(row["pid"], row["boot"], row["started"])):
                continue
            try:
                call(row["host"], lambda c, r=row: _clean(c, r, committed(r["set_id"])))
            except Exception:  # a host that does not answer now keeps its row for the next start
                continue
            self.db.run("DELETE FROM backup_jobs WHERE set_id = ?", [row["set_id"]])
            done.append(row["set_id"])
        return done


def _clean(conn: libvirt.virConnect, row: dict, committed: bool) -> None:
    try:
        dom = conn.lookupByUUIDString(row["uuid"])
        if dom.isActive() and dom.jobStats().get("operation") == diskbackup.JOB_BACKUP:
            diskbackup.abort(dom)
        if dom.isActive():
            quiesce.thaw(dom)
    except libvirt.libvirtError:
        pass  # the VM is gone or stopped: its job went with it
    volumes = [v for v in json.loads(row["volumes"]) if not (committed and v.startswith(KEPT))]
    diskbackup.delete_staged(conn, row["pool"], volumes)
