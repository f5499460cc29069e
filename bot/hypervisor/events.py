"""Since when a VM is in its state: every lifecycle event, with its time, in ``vm_events``.

libvirt tells the state and its reason but not since when. The pool delivers
every lifecycle event of every host it is connected to, including changes made
outside the bot (virsh, a crash, the guest powering itself off), so recording
them gives ``state`` its "since 10:02:13" and leaves a trail next to the audit.
Rows live in the audit database, so the answer survives a bot restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import libvirt

from bot import times
from bot.hypervisor.fleet import VmRef
from bot.hypervisor.pool import Pool
from bot.hypervisor.states import CRASHED, PAUSED, RUNNING, SHUTOFF, STATE_CODES, State
from bot.store.audit import Audit
from bot.store.db import Store

E = libvirt
# event -> (state it leaves the VM in, reason codes by event detail); None: not a state change
EFFECTS: dict[int, tuple[int, dict[int, int]] | None] = {
    E.VIR_DOMAIN_EVENT_STARTED: (RUNNING, {0: 1, 1: 2, 2: 3, 3: 4, 4: 8}),
    E.VIR_DOMAIN_EVENT_SUSPENDED: (PAUSED, {0: 1, 1: 2, 2: 5, 3: 6, 4: 3, 5: 7, 6: 0, 7: 12, 8: 13}),
    E.VIR_DOMAIN_EVENT_RESUMED: (RUNNING, {0: 5, 1: 2, 2: 4, 3: 10}),
    E.VIR_DOMAIN_EVENT_STOPPED: (SHUTOFF, {d: d + 1 for d in range(7)}),
    E.VIR_DOMAIN_EVENT_CRASHED: (CRASHED, {0: 1}),
    E.VIR_DOMAIN_EVENT_PMSUSPENDED: (E.VIR_DOMAIN_PMSUSPENDED, {}),
    E.VIR_DOMAIN_EVENT_SHUTDOWN: None,  # the guest finished; STOPPED follows
    E.VIR_DOMAIN_EVENT_DEFINED: None,
    E.VIR_DOMAIN_EVENT_UNDEFINED: None,
}
EVENT_NAMES = {
    E.VIR_DOMAIN_EVENT_DEFINED: "defined",
    E.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    E.VIR_DOMAIN_EVENT_STARTED: "started",
    E.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    E.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    E.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    E.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    E.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    E.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
COLUMNS = {
    "id": int,
    "at": str,
    "host": str,
    "vm_uuid": str,
    "event": str,
    "detail": int,
    "state": str,  # the state the event left the VM in; empty when it is not a state change
    "reason": str,
    "source": str,  # "event", or "noticed" when the bot found a state it had not seen change
    "after": str,  # for "noticed": the change happened after this time (the last one the bot saw)
}


@dataclass(frozen=True)
class Change:
    at: datetime  # aware, UTC
    state: State | None
    after: datetime | None = None  # set when the change was noticed late, not seen as an event

    def text(self) -> str:
        if self.after is None:
            return f" since {times.clock(self.at)}"
        return (
            f"; changed between {times.clock(self.after)} and {times.clock(self.at)}, while the bot was not listening"
        )


class StateLog:
    """Records lifecycle events as they arrive and answers since when a VM is in its state."""

    def __init__(self, pool: Pool, audit: Audit) -> None:
        self.pool = pool
        self.store = Store(audit, durable=False)  # state history, not the audit: no fsync per event
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], Change] = {}  # latest state change per VM, in memory
        self.changed = threading.Condition()  # notified on every recorded event (tests, live views)
        table = self.store.db["vm_events"]
        with self._db():
            table.create(COLUMNS, pk="id", if_not_exists=True)  # type: ignore[union-attr]
            table.create_index(["host", "vm_uuid", "id"], if_not_exists=True)  # type: ignore[union-attr]
        self._unsubscribe = pool.subscribe(self._on_event)
        self._watcher: threading.Thread | None = None

    def watch(self) -> None:
        """Connect to every host in the background, so changes are seen before the first command.

        A long-running bot calls this at start; a one-shot ``vmbot exec`` need not. The
        fan-out has the pool's deadline, so close() can wait for it.
        """
        connect = (lambda _h, c: c.getLibVersion(),)
        self._watcher = threading.Thread(target=self.pool.fan_out, args=connect, name="events-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._unsubscribe()
        if self._watcher is not None:
            self._watcher.join(self.pool.timeout + 1)

    # -- the pool's event thread ------------------------------------------

    def _on_event(self, host: str, uuid: str, event: int, detail: int) -> None:
        effect = EFFECTS.get(event)
        state = State(effect[0], effect[1].get(detail, 0)) if effect else None
        self._store(host, uuid, EVENT_NAMES.get(event, str(event)), detail, state)

    def _store(
        self, host: str, uuid: str, event: str, detail: int, state: State | None, after: datetime | None = None
    ) -> Change:
        change = Change(times.utc(), state, after)
        row = {
            "at": times.iso(change.at, "milliseconds"),
            "host": host,
            "vm_uuid": uuid,
            "event": event,
            "detail": detail,
            "state": state.name if state else "",
            "reason": state.reason_name if state else "",
            "source": "noticed" if after else "event",
            "after": times.iso(after, "milliseconds") if after else "",
        }
        with self._db():
            self.store.db["vm_events"].insert(row)  # type: ignore[union-attr]
        if state is not None:
            with self._lock:
                self._last[(host, uuid)] = change
        with self.changed:
            self.changed.notify_all()
        return change

    # -- questions ---------------------------------------------------------

    def last(self, ref: VmRef) -> Change | None:
        """The latest recorded state change of the VM (from memory, else from the database)."""
        with self._lock:
            if found := self._last.get((ref.host, ref.uuid)):
                return found
        with self._db():
            rows = list(
                self.store.db["vm_events"].rows_where(  # type: ignore[union-attr]
                    "host = ? and vm_uuid = ? and state != ''", [ref.host, ref.uuid], order_by="id desc", limit=1
                )
            )
        if not rows:
            return None
        row = rows[0]
        code = STATE_CODES.get(row["state"])
        after = datetime.fromisoformat(row["after"]) if row.get("after") else None
        return Change(datetime.fromisoformat(row["at"]), State(code) if code is not None else None, after)

    def since(self, ref: VmRef, now: State) -> str:
        """' since 10:02:13' when the last recorded change led to the current state, else a hint or ''."""
        change = self.last(ref)
        if change is None:
            return ""
        if not _same(change, now):  # the event may be a moment behind the state we just read
            with self.changed:
                self.changed.wait_for(lambda: _same(self.last(ref), now), timeout=EVENT_GRACE)
            change = self.last(ref) or change
        if not _same(change, now):
            change = self._store(ref.host, ref.uuid, "noticed", 0, now, after=change.at)
        return change.text()

    def changed_at(self) -> dict[tuple[str, str], datetime]:
        """When each VM last changed state, in one query: the digest asks about the whole fleet at once."""
        rows = self.store.all("SELECT host, vm_uuid, max(at) FROM vm_events WHERE state != '' GROUP BY host, vm_uuid")
        return {(h, u): datetime.fromisoformat(at) for h, u, at in rows}

    def history(self, ref: VmRef, limit: int = 10) -> list[dict]:
        with self._db():
            return list(
                self.store.db["vm_events"].rows_where(  # type: ignore[union-attr]
                    "host = ? and vm_uuid = ?", [ref.host, ref.uuid], order_by="id desc", limit=limit
                )
            )

    def _db(self) -> threading.Lock:
        """The store's lock: one sqlite connection, one writer at a time."""
        return self.store.lock


EVENT_GRACE = 1.0  # seconds to wait for an event that lags behind a state read


def _same(change: Change | None, now: State) -> bool:
    return change is not None and change.state is not None and change.state.code == now.code
