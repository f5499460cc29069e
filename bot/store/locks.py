"""Per-VM locks and the scheduler lease, as rows in the audit's SQLite file.

A row, not a threading lock, because ``vmbot exec`` and ``vmbot run`` are
different processes on the same file. A row names its owner by boot id, pid
and the process start time, so a lock left by a process that died (or by a
boot that is over) is recognised and released instead of blocking a VM forever.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bot import times
from bot.store.db import Store
from bot.store.owner import Owner, alive


class Locked(Exception):
    """Another operation holds the VM; the message says who, for what, since when."""


@dataclass(frozen=True)
class Holder:
    key: str
    user: str
    action: str
    since: str
    owner: Owner
    token: str

    def line(self, name: str) -> str:
        return (
            f"{name} is busy: {self.user} is running {self.action} on it since {times.clock(self.since)} "
            f"(pid {self.owner.pid}); try again when it is done"
        )


class Locks:
    """``with locks.hold(host, uuid, name, action, user):`` — or Locked, at once, never a wait."""

    def __init__(self, db: Store) -> None:
        self.db = db
        cols = {"key": str, "host": str, "uuid": str, "name": str, "action": str, "user": str, "since": str}
        cols |= {"pid": int, "boot": str, "started": str, "token": str}
        db.create("vm_locks", cols, "key")
        lease = {"name": str, "holder": str, "pid": int, "boot": str, "started": str, "expires": float}
        db.create("leases", lease, "name")

    @contextmanager
    def hold(self, host: str, uuid: str, name: str, action: str, user: str) -> Iterator[str]:
        token = self.acquire(host, uuid, name, action, user)
        try:
            yield token
        finally:
            self.release(token)

    def acquire(self, host: str, uuid: str, name: str, action: str, user: str) -> str:
        key, me, token = f"{host}/{uuid}", Owner.me(), secrets.token_hex(8)
        for _ in range(3):
            added = self.db.run(
                "INSERT OR IGNORE INTO vm_locks (key, host, uuid, name, action, user, since, pid, boot, started, token)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [key, host, uuid, name, action, user, times.iso(), me.pid, me.boot, me.started, token],
            )
            if added == 1:
                return token
            holder = self.holder(key)
            if holder is None:
                continue  # released between our insert and our look
            if alive(holder.owner):
                raise Locked(holder.line(f"{host}/{name}"))
            self.db.run("DELETE FROM vm_locks WHERE key = ? AND token = ?", [key, holder.token])
        raise Locked(f"{host}/{name} is busy; try again")

    def release(self, token: str) -> None:
        self.db.run("DELETE FROM vm_locks WHERE token = ?", [token])

    def holder(self, key: str) -> Holder | None:
        row = self.db.one(
            "SELECT key, user, action, since, pid, boot, started, token FROM vm_locks WHERE key = ?", [key]
        )
        if row is None:
            return None
        return Holder(row[0], row[1], row[2], row[3], Owner(row[4], row[5], row[6]), row[7])

    def held(self) -> list[dict]:
        return self.db.dicts("SELECT * FROM vm_locks ORDER BY since")

    # -- the lease: one `vmbot run` runs the scheduler and the expiry sweep ----------

    def acquire_lease(self, name: str, ttl: float, holder: str = "") -> bool:
        """Take the lease if it is free, expired, ours, or its owner is dead; True if we hold it now."""
        me, now = Owner.me(), time.time()
        row = self.db.one("SELECT pid, boot, started, expires FROM leases WHERE name = ?", [name])
        if row is not None:
            owner = Owner(row[0], row[1], row[2])
            if owner != me and row[3] > now and alive(owner):
                return False
            self.db.run(
                "DELETE FROM leases WHERE name = ? AND pid = ? AND boot = ? AND expires = ?",
                [name, row[0], row[1], row[3]],
            )
        try:
            self.db.run(
                "INSERT INTO leases (name, holder, pid, boot, started, expires) VALUES (?, ?, ?, ?, ?, ?)",
                [name, holder or f"pid {me.pid}", me.pid, me.boot, me.started, now + ttl],
            )
        except sqlite3.IntegrityError:
            return False  # someone else took it between our look and our insert
        return True

    def renew_lease(self, name: str, ttl: float) -> bool:
        """Extend our lease; False means we lost it (stop acting as the leader)."""
        me = Owner.me()
        renewed = self.db.run(
            "UPDATE leases SET expires = ? WHERE name = ? AND pid = ? AND boot = ? AND started = ?",
            [time.time() + ttl, name, me.pid, me.boot, me.started],
        )
        return renewed == 1

    def release_lease(self, name: str) -> None:
        me = Owner.me()
        self.db.run("DELETE FROM leases WHERE name = ? AND pid = ? AND boot = ?", [name, me.pid, me.boot])

    def lease_holder(self, name: str) -> dict | None:
        rows = self.db.dicts("SELECT * FROM leases WHERE name = ?", [name])
        return rows[0] if rows else None
