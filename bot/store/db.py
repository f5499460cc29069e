"""The connection the approval, lock and freeze tables use: the audit's file, our own handle.

Our own sqlite connection (not the audit's) because a Python sqlite3
connection shared by threads interleaves transactions: a rollback of an audit
insert could undo another thread's compare-and-set and let a request run twice.
Every statement is one autocommit statement under this store's lock; across
processes SQLite's own locking makes each one atomic. Only the in-memory
store (one process, no file to reopen) shares the audit's connection and lock.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import sqlite_utils

from bot.store.audit import Audit, retry_locked


class Store:
    def __init__(self, audit: Audit, durable: bool = True) -> None:
        """``durable=False`` skips the fsync per commit: for rows a power loss makes moot (VM locks)."""
        files = [row[2] for row in audit.db.execute("PRAGMA database_list").fetchall() if row[1] == "main"]
        if files and files[0]:
            conn = sqlite3.connect(files[0], check_same_thread=False, timeout=10, isolation_level=None)
            if not durable:
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL: still atomic, still safe if the process dies
            self.db = sqlite_utils.Database(conn)
            self.lock: Any = threading.Lock()
            self.own = True
        else:
            self.db, self.lock, self.own = audit.db, audit.lock, False

    def close(self) -> None:
        """Close our handle under our lock, so no writer (the event thread) is mid-statement."""
        if self.own:
            with self.lock:
                self.db.conn.close()

    def create(self, table: str, columns: dict[str, type], pk: str | tuple[str, ...], *indexes: str) -> None:
        with self.lock:
            retry_locked(lambda: self._create(table, columns, pk, indexes))

    def _create(self, table: str, columns: dict[str, type], pk: str | tuple[str, ...], indexes: tuple) -> None:
        t = self.db[table]
        t.create(columns, pk=pk, if_not_exists=True)  # type: ignore[union-attr]
        for column in indexes:
            t.create_index([column], if_not_exists=True)  # type: ignore[union-attr]

    def run(self, sql: str, args: list | tuple = ()) -> int:
        """One statement; returns how many rows it changed (the compare-and-set's answer)."""
        with self.lock:
            return self.db.execute(sql, list(args)).rowcount

    def all(self, sql: str, args: list | tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, list(args)).fetchall()

    def one(self, sql: str, args: list | tuple = ()) -> tuple | None:
        rows = self.all(sql, args)
        return rows[0] if rows else None

    def dicts(self, sql: str, args: list | tuple = ()) -> list[dict]:
        with self.lock:
            cur = self.db.execute(sql, list(args))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
