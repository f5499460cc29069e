"""The audit trail: one row per operation, written before it runs, completed after.

If the first write fails the operation does not run, so there is never an
action on a hypervisor without its row. SQLite in WAL mode lets ``vmbot exec``
and ``vmbot run`` write to the same file at once.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from bot import times
from bot.store.owner import Owner, alive

T = TypeVar("T")

TEXT_CAP = 240  # characters of free text per column: a row holds one target's outcome, never a flood
CAPPED = ("text", "detail", "reason")
COLUMNS = {
    "id": int,
    "command_id": str,
    "started_at": str,
    "ended_at": str,
    "source": str,
    "slack_user": str,
    "unix_user": str,
    "channel": str,
    "text": str,
    "action": str,
    "host": str,
    "vm_uuid": str,
    "vm_name": str,
    "decision": str,
    "reason": str,
    "result": str,
    "detail": str,
    "error_id": str,
    "owner": str,  # "boot pid started" of the process running it: a dead owner's open row is interrupted
}


class AuditDecision(StrEnum):
    """Why an operation ran or did not; the value is what the ``decision`` column holds."""

    ALLOWED = "allowed"
    REFUSED = "refused"
    NEEDS_APPROVAL = "needs approval"
    DRY_RUN = "dry-run"


@dataclass(frozen=True)
class Actor:
    """Who asks, and from where: the Slack ID always, the Unix user from a terminal."""

    user: str
    channel: str = ""
    unix_user: str = ""
    source: str = "terminal"


def clip(text: str | None, cap: int = TEXT_CAP) -> str | None:
    """Free text is capped, so one command cannot grow the store by more than a row per target."""
    if text is None or len(text) <= cap:
        return text
    return text[: cap - 1] + "…"


def intact(path: Path) -> None:
    """Refuse a damaged store before anything writes to it: PRAGMA quick_check on a read-only handle.

    A bot that kept writing into a damaged file would fail per command and damage it further; the
    operator gets one line and the file as it was, to restore or to hand to sqlite3's .recover.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            found = [row[0] for row in conn.execute("PRAGMA quick_check").fetchmany(3)]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        found = [str(e)]
    if found != ["ok"]:
        why = "; ".join(str(f) for f in found)[:200]
        raise AuditError(f"the store {path} is damaged ({why}); vmbot left it untouched: restore it or move it away")


def private_file(path: Path) -> None:
    """Create the store file 0600 (in a new 0700 directory) whatever the umask, before SQLite opens it.

    SQLite gives its -wal and -shm files the database file's own mode, so they are private too.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    os.chmod(path, 0o600)  # an older store, or one created under a loose umask
    for extra in ("-wal", "-shm"):
        with suppress(FileNotFoundError):
            os.chmod(f"{path}{extra}", 0o600)


_JITTER = random.Random()  # its own generator: waiting must not reseed or advance anyone else's


def retry_locked(step: Callable[[], T], within: float = 30.0) -> T:
    """Run a schema step, again while another process holds the lock.

    SQLite answers "database is locked" at once, without waiting out the busy
    timeout, when two connections both upgrade a read to a write (schema
    creation and the switch to WAL do): twenty processes starting on a fresh
    store must each wait their turn, not fail.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(_JITTER.uniform(0.01, 0.1))


def now() -> str:
    return times.iso(precision="milliseconds")


class AuditError(Exception):
    """The audit store could not record the operation, so it must not run."""


class Audit:
    def __init__(self, path: str) -> None:
        try:
            if path != ":memory:":
                intact(Path(path))
                private_file(Path(path))
            self._open(path)
        except (sqlite3.Error, OSError) as e:  # a bad [store] path is one line at start-up, not a traceback
            raise AuditError(f"cannot open the audit store {path}: {e}") from None

    def _open(self, path: str) -> None:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()  # public: the in-memory store (bot/store/db.py) shares it; batch() re-enters
        self._firsts: OrderedDict[str, int] = OrderedDict()  # command id -> its first row, recent commands only
        self.owner = Owner.me().tag()
        if path != ":memory:":
            retry_locked(self.db.enable_wal)
        retry_locked(self._schema)

    def _schema(self) -> None:
        ops = self.db["operations"]
        ops.create(COLUMNS, pk="id", if_not_exists=True)  # type: ignore[union-attr]
        ops.create_index(["vm_uuid"], if_not_exists=True)  # type: ignore[union-attr]
        ops.create_index(["vm_name"], if_not_exists=True)  # type: ignore[union-attr]
        if "owner" not in ops.columns_dict:  # a store from before owners were recorded
            ops.add_column("owner", str)  # type: ignore[union-attr]
        self.db.execute("CREATE INDEX IF NOT EXISTS operations_open ON operations (id) WHERE ended_at IS NULL")

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()

    def begin(self, actor: Actor, command_id: str, text: str, action: str, decision: AuditDecision, **row: Any) -> int:
        """Record an operation before it runs; raises AuditError if that is impossible."""
        record = {
            "command_id": command_id,
            "started_at": now(),
            "source": actor.source,
            "slack_user": actor.user,
            "unix_user": actor.unix_user,
            "channel": actor.channel,
            "text": text,
            "action": action,
            "decision": str(decision),
            **row,
        }
        if "ended_at" not in row and decision != "needs approval":  # only a row left open needs its owner
            record["owner"] = self.owner
        for column in CAPPED:
            if isinstance(record.get(column), str):
                record[column] = clip(record[column])
        try:
            with self.lock:
                first = self._firsts.get(command_id)
                if first is not None:  # the command's text is on its first row; a glob repeats no text per target
                    record["text"] = f"as #{first}"
                row_id = self._insert(record)
                if first is None:
                    self._firsts[command_id] = row_id
                    if len(self._firsts) > 256:
                        self._firsts.popitem(last=False)
                return row_id
        except sqlite3.Error as e:
            raise AuditError(f"the audit store cannot record this ({e}); nothing was run") from e

    def finish(self, row_id: int, result: str, detail: str = "", error_id: str | None = None) -> None:
        """Complete a row; AuditError if the store refuses (the caller says so, it never adds a second row)."""
        try:
            with self.lock:
                self.db["operations"].update(  # type: ignore[union-attr]
                    row_id, {"ended_at": now(), "result": result, "detail": clip(detail), "error_id": error_id}
                )
        except sqlite3.Error as e:
            raise AuditError(f"the audit store could not record the result ({e})") from e

    def recover(self) -> int:
        """At start: rows left running by a process that is gone become interrupted; returns how many.

        Rows waiting for approval stay open: their requester (``vmbot exec``) exits while they wait,
        and the approval workflow closes them.
        """
        with self.lock:
            open_rows = self.db.execute(
                "SELECT id, owner FROM operations WHERE ended_at IS NULL AND owner IS NOT NULL"
                " AND decision != 'needs approval'"
            ).fetchall()
        dead = [(i, o) for i, tag in open_rows if (o := Owner.parse(tag)) is not None and not alive(o)]
        for row_id, owner in dead:
            why = f"the process running it (pid {owner.pid}) ended before it finished; not re-run"
            with self.lock:
                self.db.execute(
                    "UPDATE operations SET ended_at = ?, result = 'interrupted', detail = ? WHERE id = ?"
                    " AND ended_at IS NULL",
                    [now(), why, row_id],
                )
        return len(dead)

    def abandon(self, row_ids: list[int], why: str) -> None:
        """Close rows of a batch that never ran because a later row could not be written."""
        for row_id in row_ids:
            try:
                self.finish(row_id, "not run", why)
            except AuditError:
                pass  # the store is failing; the caller reports that already

    def _insert(self, record: dict[str, Any]) -> int:
        """One INSERT on our connection, so a batch() transaction holds it (sqlite_utils would commit)."""
        unknown = set(record) - set(COLUMNS) - {"owner"}
        if unknown:
            raise sqlite3.ProgrammingError(f"no audit columns {sorted(unknown)}")
        names = ", ".join(record)
        marks = ", ".join("?" * len(record))
        cur = self.db.execute(f"INSERT INTO operations ({names}) VALUES ({marks})", list(record.values()))
        return int(cur.lastrowid or 0)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The rows of one command over many targets in one transaction: one fsync, not one per target."""
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise AuditError(f"the audit store cannot record this ({e}); nothing was run") from e
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                raise AuditError(f"the audit store cannot record this ({e}); nothing was run") from e

    def record(
        self,
        actor: Actor,
        command_id: str,
        text: str,
        action: str,
        decision: AuditDecision,
        result: str,
        detail: str,
        **row: Any,
    ) -> int:
        """A row that starts and ends at once: refusals and read-only answers (one write, not two)."""
        at = now()  # one clock reading: a row never ends before it starts
        done = {"result": result, "detail": detail, "started_at": at, "ended_at": at}
        return self.begin(actor, command_id, text, action, decision, **done, **row)

    def latest(self, vm: str | None = None, host: str | None = None, limit: int = 15) -> list[dict]:
        where, args = [], []
        if vm:
            where.append("vm_name = ?")
            args.append(vm)
        if host:
            where.append("host = ?")
            args.append(host)
        with self.lock:
            rows = self.db["operations"].rows_where(  # type: ignore[union-attr]
                " and ".join(where) or None, args, order_by="id desc", limit=limit
            )
            return list(rows)
