"""The inventory the bot keeps: every host's VMs, current from lifecycle events and a periodic resync.

A fleet of a thousand hosts cannot be asked everything for every command. The
running bot (``vmbot run``) keeps what each host holds in memory and in the
store's ``vm_inventory`` table: a full resync at start and every few minutes, a
state change from every lifecycle event, and a prompt resync of a host where a
VM was defined or undefined. Reads that can be answered from it are (``list``,
App Home, the digest through ``snapshot``); a state change only uses it to know
which host to ask, and then acts on what that host says now.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import libvirt

from bot.hypervisor.events import EFFECTS
from bot.hypervisor.fleet import UUID, Fleet, Inventory, Located, VmRef, VmRow, literal_prefix, pick
from bot.hypervisor.pool import Pool
from bot.hypervisor.states import state_of
from bot.store.vms import StoredVm, VmTable

log = logging.getLogger(__name__)
RESYNC_EVERY = 300.0  # a full resync; events keep states current in between
BEAT_EVERY = 15.0  # how often the keeper says it is alive
POLL_EVERY = 1.0  # how often the keeper looks for hosts another process (vmbot exec) marked dirty
STALE_AFTER = 60.0  # no beat for this long: nobody is keeping the inventory
FIRST_WAIT = 120.0  # a list waits this long for the first resync instead of asking every host again
RESYNC_CHUNK = 200  # hosts asked per fan-out in a resync
RETRY_AFTER = 5.0  # a keeper turn that failed for the bot's own reason (the store locked or full) runs again
RESHAPE = {libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED}


@dataclass(frozen=True)
class Snapshot:
    """The kept inventory at one moment: for list, App Home and the scheduler's digest."""

    inventory: Inventory  # rows of the hosts that answered their last resync; down: the others
    as_of: float  # unix time of the last full resync

    def note(self) -> str:
        return f"from the inventory kept by the bot (resynced {datetime.fromtimestamp(self.as_of):%H:%M:%S})"


class KeptInventory:
    def __init__(self, pool: Pool, fleet: Fleet, table: VmTable, resync_every: float = RESYNC_EVERY) -> None:
        self.pool, self.fleet, self.table, self.resync_every = pool, fleet, table, resync_every
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, VmRow]] = {}  # host -> uuid -> row (the keeping process only)
        self._down: dict[str, str] = {}
        self._as_of = 0.0
        self._dirty: set[str] = set()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._unsubscribe = lambda: None
        self._thread: threading.Thread | None = None
        self._first = threading.Event()  # the first full resync is in the table and in memory

    # -- keeping (vmbot run) ----------------------------------------------------

    def keep(self) -> None:
        """Listen to lifecycle events, resync now and then every ``resync_every`` s, in the background."""
        self.table.forget_hosts_except(self.pool.names)  # a host removed from [hosts] leaves nothing behind
        self._unsubscribe = self.pool.subscribe(self._on_event)
        self.pool.host_watchers.append(self._on_host)
        self._thread = threading.Thread(target=self._loop, name="inventory", daemon=True)
        self._thread.start()

    def resync(self, hosts: list[str] | None = None) -> None:
        """Ask the hosts (all of them, or the named ones) and store what they hold.

        In chunks of RESYNC_CHUNK hosts: the fresh rows of a thousand hosts never sit beside the
        kept ones all at once (the whole domain list twice), only a chunk's.
        """
        names = hosts if hosts is not None else self.pool.names
        started = time.time()
        for i in range(0, len(names), RESYNC_CHUNK):
            self._resync(names[i : i + RESYNC_CHUNK])
            if self._first.is_set():  # alive through a long resync; never before the first one is whole
                self.table.beat(time.time())
        if hosts is None:
            with self._lock:
                self._as_of = started
            self._first.set()
        self.table.beat(time.time())

    def _resync(self, hosts: list[str]) -> None:
        inv = self.fleet.inventory(hosts)
        now = time.time()
        grouped = inv.by_host()
        for host in hosts:
            if host in inv.down:
                self.table.host_down(host, inv.down[host])
                with self._lock:
                    self._down[host] = inv.down[host]
                continue
            rows = grouped.get(host, [])
            self.table.replace_host(
                host, ((r.ref.uuid, r.ref.name, r.state.code, r.state.reason, r.autostart) for r in rows), now
            )
            with self._lock:
                self._rows[host] = {r.ref.uuid: r for r in rows}
                self._down.pop(host, None)

    def close(self) -> None:
        self._stop.set()
        self._unsubscribe()
        if self._on_host in self.pool.host_watchers:
            self.pool.host_watchers.remove(self._on_host)
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)  # a resync under way finishes; nothing is written after close

    def _loop(self) -> None:
        """Turns until closed. A turn that fails (the store locked past its busy timeout, a full disk) is
        logged and run again after RETRY_AFTER: it never ends the keeper, which left the inventory never
        resynced again (and, before the first resync, every list waiting FIRST_WAIT) until a restart."""
        due = {"full": 0.0, "beat": 0.0}
        while not self._stop.is_set():
            try:
                self._turn(due)
            except Exception:
                log.exception("inventory: keeping it failed; trying again in %g s", RETRY_AFTER)
                self._stop.wait(RETRY_AFTER)

    def _turn(self, due: dict[str, float]) -> None:
        if time.monotonic() >= due["full"]:
            self.table.take_dirty()  # a full resync covers them
            self.resync()
            due["full"] = time.monotonic() + self.resync_every
        with self._wake:
            self._wake.wait_for(lambda: self._dirty or self._stop.is_set(), timeout=POLL_EVERY)
            dirty, self._dirty = set(self._dirty), set()
        if self._stop.is_set():
            return
        try:
            dirty |= set(self.table.take_dirty()) & set(self.pool.names)
            if dirty:
                self.resync(sorted(dirty))
        except Exception:
            with self._wake:
                self._dirty |= dirty  # asked again on the next turn, not lost
            raise
        if time.monotonic() >= due["beat"]:
            self.table.beat(time.time())
            due["beat"] = time.monotonic() + BEAT_EVERY

    def touch(self, hosts: list[str]) -> None:
        """The bot changed something there (autostart sends no lifecycle event): resync those hosts soon.

        In a process that does not keep the inventory (vmbot exec), the hosts are marked dirty in
        the store, and the keeping process resyncs them within ``POLL_EVERY``.
        """
        if self._thread is None:
            self.table.mark_dirty(hosts, time.time())
            return
        with self._wake:
            self._dirty.update(hosts)
            self._wake.notify_all()

    def _on_host(self, host: str, up: bool, _reason: str) -> None:
        """A host back from down is resynced at once, not at the next full resync."""
        if up:
            with self._wake:
                self._dirty.add(host)
                self._wake.notify_all()

    def _on_event(self, host: str, uuid: str, event: int, detail: int) -> None:
        if event in RESHAPE:
            with self._wake:
                self._dirty.add(host)
                self._wake.notify_all()
            return
        effect = EFFECTS.get(event)
        if not effect:
            return
        state, now = state_of(effect[0], effect[1].get(detail, 0)), time.time()
        self.table.set_state(host, uuid, state.code, state.reason, now)
        with self._lock:
            row = self._rows.get(host, {}).get(uuid)
            if row is not None:
                self._rows[host][uuid] = VmRow(row.ref, state, row.autostart, row.vcpus, row.memory_kib)

    # -- reading (any process on the store) -------------------------------------

    def keeping(self) -> bool:
        """This process keeps the inventory and has resynced it at least once."""
        return self._as_of > 0

    def fresh(self) -> tuple[bool, str]:
        """Whether someone keeps the stored inventory now; if not, the line a reply says about it."""
        if self.keeping():
            return True, ""
        at = self.table.kept_at()
        if at is None:
            return False, "no inventory is kept (vmbot run keeps one): asked every host"
        if time.time() - at > STALE_AFTER:
            return False, f"the inventory is stale (last kept {datetime.fromtimestamp(at):%H:%M:%S}): asked every host"
        return True, ""

    def snapshot(self, hosts: list[str] | None = None, wait: float = 0.0) -> Snapshot | None:
        """The fleet as kept, or None when nobody keeps it (then ask the hosts).

        ``wait``: while this process's first resync is under way, wait up to that
        long for it rather than ask every host a second time.
        """
        if wait and self._thread is not None:
            self._first.wait(wait)
        names = hosts if hosts is not None else self.pool.names
        if self.keeping():
            with self._lock:
                down = {h: self._down_line(h) for h in names if h in self._down or self.pool.status(h)}
                rows = [r for h in names if h not in down for r in sorted(self._rows.get(h, {}).values(), key=_name)]
                return Snapshot(Inventory(rows, down), self._as_of)
        ok, _ = self.fresh()
        if not ok:
            return None
        stored_down = self.table.down()
        down = {h: f"{h}: did not answer the last resync ({stored_down[h]})" for h in names if h in stored_down}
        got, wanted = self.table.rows(None if hosts is None else names), set(names)
        rows = [_row(v) for v in got if v.host not in down and v.host in wanted]
        return Snapshot(Inventory(rows, down), self.table.kept_at() or 0.0)

    def since(self, hosts: list[str] | None = None) -> dict[tuple[str, str], float]:
        """(host, uuid) -> unix time each VM entered its current state, as kept (for the digest)."""
        known = set(self.pool.names)
        return {(v.host, v.uuid): v.since for v in self.table.rows(hosts) if v.host in known}

    def locate(self, patterns: list[str]) -> Located:
        """The hosts that hold what the patterns name, from the kept inventory, without opening any host."""
        ok, why = self.fresh()
        if not ok:
            return Located(None, why)
        hosts: set[str] = set()
        for pattern in patterns:
            head, sep, _rest = pattern.partition("/")
            if sep and head in self.pool.names:
                hosts.add(head)
                continue
            found = self._hosts_of(pattern)
            if not found:
                return Located(None, f"'{pattern}' is not in the inventory: asked every host")
            hosts |= found
        return Located(sorted(hosts))

    def _hosts_of(self, pattern: str) -> set[str]:
        """Where the kept rows hold what ``pattern`` selects, by the same rule as asking every host."""
        known = set(self.pool.names)
        uuid = pattern.lower() if UUID.match(pattern.lower()) else ""
        scope = [_row(v) for v in self.table.starting(literal_prefix(pattern), uuid) if v.host in known]
        hits, _globbed = pick(pattern, scope)
        return {r.ref.host for r in hits}

    def _down_line(self, host: str) -> str:
        status = self.pool.status(host)
        if status is not None:
            return f"{host}: unreachable since {datetime.fromtimestamp(status.since):%H:%M} ({status.reason})"
        return self._down[host]


def _name(row: VmRow) -> str:
    return row.ref.name


def _row(v: StoredVm) -> VmRow:
    return VmRow(VmRef(v.host, v.uuid, v.name), state_of(v.state, v.reason), v.autostart)
