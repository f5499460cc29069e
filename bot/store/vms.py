"""The VM inventory table: every host's VMs (name, UUID, state, since when), and when it was last kept.

Written by the one process that keeps the inventory (``vmbot run``), read by any
process on the same store: ``vmbot exec`` next to a running bot finds which host
holds a bare name with one indexed query instead of opening every host. A
heartbeat says whether anybody is keeping it; without a recent one the table is
stale and readers ask the hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.store.db import Store

COLUMNS = {
    "host": str,
    "uuid": str,
    "name": str,
    "state": int,
    "reason": int,
    "autostart": int,
    "since": float,  # unix time the bot first saw this state (event time, or the resync that noticed it)
}
KEEPER = "keeper"  # the meta row the keeping process beats


@dataclass(frozen=True)
class StoredVm:
    host: str
    uuid: str
    name: str
    state: int
    reason: int
    autostart: bool
    since: float


class VmTable:
    def __init__(self, db: Store) -> None:
        self.db = db
        db.create("vm_inventory", COLUMNS, ("host", "uuid"), "name")
        db.create("vm_inventory_hosts", {"host": str, "synced": float, "down": str}, "host")
        db.create("vm_inventory_meta", {"key": str, "at": float}, "key")
        db.create("vm_inventory_dirty", {"host": str, "at": float}, "host")

    def replace_host(self, host: str, rows: Iterable[tuple[str, str, int, int, bool]], now: float) -> None:
        """A host's whole list from a resync; a VM whose state did not change keeps its ``since``."""
        with self.db.lock:
            conn = self.db.db.conn
            old = dict(
                (u, (s, r, since))
                for u, s, r, since in conn.execute(
                    "SELECT uuid, state, reason, since FROM vm_inventory WHERE host = ?", [host]
                )
            )
            fresh = []
            for uuid, name, state, reason, autostart in rows:
                prev = old.get(uuid)
                since = prev[2] if prev and prev[0] == state else now
                fresh.append((host, uuid, name, state, reason, int(autostart), since))
            conn.execute("SAVEPOINT replace_host")  # works whether or not the connection autocommits
            try:
                conn.execute("DELETE FROM vm_inventory WHERE host = ?", [host])
                conn.executemany("INSERT INTO vm_inventory VALUES (?, ?, ?, ?, ?, ?, ?)", fresh)
                conn.execute("INSERT OR REPLACE INTO vm_inventory_hosts VALUES (?, ?, '')", [host, now])
                conn.execute("RELEASE replace_host")
            except BaseException:
                conn.execute("ROLLBACK TO replace_host")
                conn.execute("RELEASE replace_host")
                raise

    def host_down(self, host: str, reason: str) -> None:
        """Keep the host's last known VMs, and say it did not answer."""
        self.db.run(
            "INSERT INTO vm_inventory_hosts (host, synced, down) VALUES (?, 0, ?) "
            "ON CONFLICT(host) DO UPDATE SET down = excluded.down",
            [host, reason],
        )

    def set_state(self, host: str, uuid: str, state: int, reason: int, now: float) -> None:
        self.db.run(
            "UPDATE vm_inventory SET state = ?, reason = ?, since = ? WHERE host = ? AND uuid = ?",
            [state, reason, now, host, uuid],
        )

    def mark_dirty(self, hosts: list[str], now: float) -> None:
        """Another process (vmbot exec) changed something there without a lifecycle event: resync it."""
        for host in hosts:
            self.db.run("INSERT OR REPLACE INTO vm_inventory_dirty (host, at) VALUES (?, ?)", [host, now])

    def take_dirty(self) -> list[str]:
        """The hosts marked dirty since the last look, unmarked (the keeper resyncs them)."""
        hosts = [h for (h,) in self.db.all("SELECT host FROM vm_inventory_dirty")]
        if hosts:
            marks = ",".join("?" * len(hosts))
            self.db.run(f"DELETE FROM vm_inventory_dirty WHERE host IN ({marks})", hosts)
        return hosts

    def beat(self, now: float) -> None:
        self.db.run("INSERT OR REPLACE INTO vm_inventory_meta (key, at) VALUES (?, ?)", [KEEPER, now])

    def kept_at(self) -> float | None:
        """When the keeping process last said it is alive; None if no process ever kept it."""
        row = self.db.one("SELECT at FROM vm_inventory_meta WHERE key = ?", [KEEPER])
        return row[0] if row else None

    def starting(self, prefix: str, uuid: str = "") -> list[StoredVm]:
        """Rows whose name starts with ``prefix`` (an indexed range), or whose UUID is ``uuid``.

        Only narrows: which of them a name selects is decided in Python by fleet.pick,
        the same rule as asking the hosts (SQLite GLOB is not fnmatch).
        """
        got = self.db.all("SELECT * FROM vm_inventory WHERE name >= ? AND name < ?", [prefix, prefix + chr(0x10FFFF)])
        if uuid:
            got += self.db.all("SELECT * FROM vm_inventory WHERE uuid = ?", [uuid])
        return [StoredVm(h, u, n, s, r, bool(a), since) for h, u, n, s, r, a, since in got if n.startswith(prefix)]

    def forget_hosts_except(self, hosts: list[str]) -> None:
        """Drop the rows of hosts no longer in the config (a retired host's VMs are nobody's)."""
        marks = ",".join("?" * len(hosts)) or "''"
        for table in ("vm_inventory", "vm_inventory_hosts"):
            self.db.run(f"DELETE FROM {table} WHERE host NOT IN ({marks})", hosts)

    def rows(self, hosts: list[str] | None = None) -> list[StoredVm]:
        if hosts is None:
            got = self.db.all("SELECT * FROM vm_inventory ORDER BY host, name")
        else:
            marks = ",".join("?" * len(hosts))
            got = self.db.all(f"SELECT * FROM vm_inventory WHERE host IN ({marks}) ORDER BY host, name", hosts)
        return [StoredVm(h, u, n, s, r, bool(a), since) for h, u, n, s, r, a, since in got]

    def down(self) -> dict[str, str]:
        return dict(self.db.all("SELECT host, down FROM vm_inventory_hosts WHERE down != ''"))
