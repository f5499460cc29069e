"""Approval requests, votes and events, in the audit's SQLite file.

Every status change is one ``UPDATE ... WHERE status = ?`` statement, so when
fifty people click Approve at once (in one process or several) exactly one of
them moves the request to ``executing`` and runs it. Requests survive a
restart; one left ``executing`` by a process that died becomes
``interrupted`` and is never run again on its own.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from enum import StrEnum

from bot import times
from bot.store.db import Store
from bot.store.owner import Owner, alive

ID_CHARS = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: people type these


class ApprovalStatus(StrEnum):
    """Where a request is; the value is the ``status`` column's text, so rows written before this type still read."""

    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    DONE = "done"
    DENIED = "denied"
    EXPIRED = "expired"
    INTERRUPTED = "interrupted"
    REFUSED = "refused"


class ApprovalEvent(StrEnum):
    """What happened to a request, one row each in ``approval_events`` (``kind``)."""

    REQUEST = "request"
    APPROVE = "approve"
    DENY = "deny"
    REFUSED = "refused"
    EXECUTE = "execute"
    EXPIRE = "expire"
    INTERRUPTED = "interrupted"


OPEN = ApprovalStatus.PENDING
RUNNING = (ApprovalStatus.APPROVED, ApprovalStatus.EXECUTING)  # owned by a process: interrupted if it dies

REQUEST_COLUMNS = {
    "id": str,
    "created_at": str,
    "expires_at": float,
    "requester": str,
    "channel": str,
    "source": str,
    "unix_user": str,
    "action": str,
    "text": str,
    "reason": str,
    "targets": str,  # JSON: a list of ApprovalTarget as objects
    "needed": int,
    "approvers_role": str,
    "decision": str,
    "audit_id": int,
    "status": str,
    "result": str,
    "decided_by": str,
    "updated_at": str,
    "owner_pid": int,
    "owner_boot": str,
    "owner_started": str,
}


def new_id() -> str:
    return "".join(secrets.choice(ID_CHARS) for _ in range(6))


@dataclass(frozen=True)
class ApprovalTarget:
    """One VM a request is bound to, as it was when asked (host + UUID; the name and state for people)."""

    host: str
    uuid: str
    name: str
    state: str
    vcpus: int = 0
    memory_kib: int = 0
    preview: str = ""
    audit_id: int | None = None  # its audit row, finished when the request ends

    @classmethod
    def load(cls, data: dict) -> ApprovalTarget:
        """From the JSON in a row; keys this version does not know are dropped, not an error."""
        return cls(**{f.name: data[f.name] for f in dataclass_fields(cls) if f.name in data})


@dataclass
class ApprovalRequest:
    """Everything an adapter needs to render the approval message, and the bot to run it."""

    id: str
    created_at: str
    expires_at: float
    requester: str
    channel: str
    source: str
    unix_user: str
    action: str
    text: str
    reason: str
    targets: list[ApprovalTarget]
    needed: int
    approvers_role: str
    decision: str
    audit_id: int
    status: ApprovalStatus
    result: str = ""
    decided_by: str = ""
    updated_at: str = ""
    approvals: list[tuple[str, str]] = field(default_factory=list)  # (user, when), in order

    @property
    def approvers(self) -> list[str]:
        return [u for u, _ in self.approvals]

    @property
    def preview(self) -> list[str]:
        return [t.preview for t in self.targets]

    def expired(self, now: float | None = None) -> bool:
        return self.status == OPEN and (time.time() if now is None else now) >= self.expires_at


class Approvals:
    def __init__(self, db: Store) -> None:
        self.db = db
        db.create("approval_requests", REQUEST_COLUMNS, "id", "status")
        db.create("approval_votes", {"request_id": str, "user": str, "at": str}, ("request_id", "user"))
        events = {"id": int, "request_id": str, "at": str, "kind": str, "user": str, "detail": str, "audit_id": int}
        db.create("approval_events", events, "id", "request_id")

    def create(self, targets: list[ApprovalTarget], **fields: object) -> ApprovalRequest:
        """Store a new pending request; ``targets`` is a list of ApprovalTarget (JSON in the row)."""
        now = time.time()
        row = {
            "created_at": times.iso(now),
            "updated_at": times.iso(now),
            "status": OPEN,
            "result": "",
            "decided_by": "",
            **fields,
            "targets": json.dumps([asdict(t) for t in targets]),
        }
        for _ in range(5):
            row["id"] = new_id()
            added = self.db.run(
                f"INSERT OR IGNORE INTO approval_requests ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            if added == 1:
                break
        request = self.get(str(row["id"]))
        assert request is not None
        self.event(request.id, ApprovalEvent.REQUEST, request.requester, request.text, request.audit_id)
        return request

    def get(self, request_id: str) -> ApprovalRequest | None:
        cols = [c for c in REQUEST_COLUMNS if not c.startswith("owner_")]
        row = self.db.one(f"SELECT {', '.join(cols)} FROM approval_requests WHERE id = ?", [request_id.strip().upper()])
        if row is None:
            return None
        data = dict(zip(cols, row, strict=True))
        data["targets"] = [ApprovalTarget.load(t) for t in json.loads(data["targets"] or "[]")]
        data["status"] = ApprovalStatus(data["status"])
        return ApprovalRequest(**data, approvals=self.votes(data["id"]))

    def pending(self) -> list[ApprovalRequest]:
        ids = self.db.all("SELECT id FROM approval_requests WHERE status = ? ORDER BY created_at, rowid", [OPEN])
        return [r for (rid,) in ids if (r := self.get(rid))]

    def votes(self, request_id: str) -> list[tuple[str, str]]:
        rows = self.db.all("SELECT user, at FROM approval_votes WHERE request_id = ? ORDER BY rowid", [request_id])
        return [(u, a) for u, a in rows]

    def vote(self, request_id: str, user: str) -> bool:
        """Add one approval, only while the request is pending; False if it was not added."""
        added = self.db.run(
            "INSERT OR IGNORE INTO approval_votes (request_id, user, at) SELECT ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM approval_requests WHERE id = ? AND status = ? AND expires_at > ?)",
            [request_id, user, times.iso(), request_id, OPEN, time.time()],
        )
        return added == 1

    def move(
        self, request_id: str, old: ApprovalStatus, new: ApprovalStatus, by: str = "", result: str | None = None
    ) -> bool:
        """The compare-and-set: move ``old`` -> ``new`` in one statement; True for the one caller that did."""
        sets, args = ["status = ?", "updated_at = ?"], [new, times.iso()]
        if by:
            sets.append("decided_by = ?")
            args.append(by)
        if result is not None:
            sets.append("result = ?")
            args.append(result)
        if new in RUNNING:
            me = Owner.me()
            sets += ["owner_pid = ?", "owner_boot = ?", "owner_started = ?"]
            args += [me.pid, me.boot, me.started]
        extra = " AND expires_at > ?" if old == OPEN and new == ApprovalStatus.APPROVED else ""
        args += [request_id, old] + ([time.time()] if extra else [])
        moved = self.db.run(f"UPDATE approval_requests SET {', '.join(sets)} WHERE id = ? AND status = ?{extra}", args)
        return moved == 1

    def expire(self, request_id: str) -> bool:
        moved = self.db.run(
            "UPDATE approval_requests SET status = ?, updated_at = ?, result = 'expired before approval' "
            "WHERE id = ? AND status = ? AND expires_at <= ?",
            [ApprovalStatus.EXPIRED, times.iso(), request_id, OPEN, time.time()],
        )
        return moved == 1

    def due(self) -> list[str]:
        """Pending requests whose time is up (the sweep expires them)."""
        rows = self.db.all("SELECT id FROM approval_requests WHERE status = ? AND expires_at <= ?", [OPEN, time.time()])
        return [r[0] for r in rows]

    def orphans(self) -> list[tuple[str, ApprovalStatus]]:
        """Requests approved or executing in a process that is gone: they must become interrupted."""
        rows = self.db.all(
            "SELECT id, status, owner_pid, owner_boot, owner_started FROM approval_requests WHERE status IN (?, ?)",
            list(RUNNING),
        )
        return [
            (rid, ApprovalStatus(st))
            for rid, st, pid, boot, start in rows
            if not alive(Owner(pid or 0, boot or "", start or ""))
        ]

    def event(
        self, request_id: str, kind: ApprovalEvent, user: str, detail: str = "", audit_id: int | None = None
    ) -> None:
        self.db.run(
            "INSERT INTO approval_events (request_id, at, kind, user, detail, audit_id) VALUES (?, ?, ?, ?, ?, ?)",
            [request_id, times.iso(), kind, user, detail, audit_id],
        )

    def events(self, request_id: str) -> list[dict]:
        return self.db.dicts("SELECT * FROM approval_events WHERE request_id = ? ORDER BY id", [request_id])
