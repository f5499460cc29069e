"""Alerts as they happen: a VM that crashes or shuts off with nobody asking through the bot, a host that
stops answering; once per incident, rate-limited, with a recovery line when it comes back.

Incidents are rows (``incidents`` in the store), so a restart neither repeats
an alert nor forgets one, and the next digest lists what happened since.
Only the process holding the scheduler lease posts (``active``), so two
``vmbot run`` processes never post the same crash twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import libvirt

from bot.hypervisor.pool import Pool
from bot.reports.model import AMBER, GREEN, RED, Item
from bot.store.db import Store

log = logging.getLogger(__name__)
E = libvirt
STOP_DETAIL = {0: "shut down", 1: "destroyed", 2: "crashed", 3: "migrated away", 4: "saved", 5: "failed", 6: "restored"}
CRASHES = {2, 5}  # STOPPED_CRASHED, STOPPED_FAILED: a killed QEMU shows as one of these
BY_BOT = frozenset({"shutdown", "destroy", "managedsave", "undefine", "reboot", "reset", "suspend"})
COLUMNS = {"id": int, "key": str, "kind": str, "host": str, "vm_uuid": str, "vm_name": str, "level": str}
COLUMNS |= {"text": str, "opened": str, "closed": str}


@dataclass(frozen=True)
class Alert:
    level: str  # red (crash, host down), amber (unexpected shut off), green (recovered)
    text: str  # raw: the adapter escapes it


Sink = Callable[[Alert], None]


class Incidents:
    def __init__(self, db: Store) -> None:
        self.db = db
        db.create("incidents", COLUMNS, "id", "key")

    def open(self, key: str, kind: str, host: str, uuid: str, name: str, level: str, text: str) -> bool:
        """Open an incident unless one for the same key is still open; True if this is a new one."""
        with self.db.lock:
            cur = self.db.db.execute("SELECT 1 FROM incidents WHERE key = ? AND closed = ''", [key])
            if cur.fetchone():
                return False
            self.db.db.execute(
                "INSERT INTO incidents (key, kind, host, vm_uuid, vm_name, level, text, opened, closed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, '')",
                [key, kind, host, uuid, name, level, text, _now()],
            )
            return True

    def close(self, key: str) -> dict | None:
        """Close the open incident for ``key``; the row as it was, or None if none was open."""
        rows = self.db.dicts("SELECT * FROM incidents WHERE key = ? AND closed = ''", [key])
        if (
            not rows
            or self.db.run("UPDATE incidents SET closed = ? WHERE id = ? AND closed = ''", [_now(), rows[0]["id"]]) != 1
        ):
            return None
        return rows[0]

    def since(self, when: datetime) -> list[dict]:
        return self.db.dicts("SELECT * FROM incidents WHERE opened >= ? OR closed = '' ORDER BY id", [when.isoformat()])

    def items(self, when: datetime) -> list[Item]:
        """Incidents opened since ``when`` or still open, for the digest."""
        out = []
        for r in self.since(when):
            state = "still open" if not r["closed"] else f"recovered {r['closed'][11:16]} UTC"
            level = r["level"] if not r["closed"] else AMBER
            out.append(
                Item(
                    level,
                    f"alert {r['opened'][:16].replace('T', ' ')} UTC: {r['text']} ({state})",
                    r["host"],
                    r["vm_name"],
                    r["vm_uuid"],
                )
            )
        return out

    def returned_hosts(self, within: timedelta = timedelta(days=1)) -> dict[str, datetime]:
        """Hosts that came back after being away, and when (autostart health asks)."""
        since = (datetime.now(UTC) - within).isoformat()
        rows = self.db.all(
            "SELECT host, max(closed) FROM incidents WHERE kind = 'host' AND closed >= ? GROUP BY host", [since]
        )
        return {h: datetime.fromisoformat(at) for h, at in rows}


def summary(held: list[Alert], shown: int = 5) -> Alert:
    """``N more alerts held back: a; b; …`` at the level of the worst of them."""
    level = next((lv for lv in (RED, AMBER, GREEN) if any(a.level == lv for a in held)), RED)
    texts = "; ".join(a.text for a in held[:shown])
    rest = f"; and {len(held) - shown} more (see the digest)" if len(held) > shown else ""
    return Alert(level, f"{len(held)} more alert(s) held back by the rate limit: {texts}{rest}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Alerts:
    """Lifecycle events and host reachability in, alerts out (to ``sink``), once per incident."""

    def __init__(
        self,
        pool: Pool,
        incidents: Incidents,
        by_bot: Callable[[str, str], bool],
        name_of: Callable[[str, str], str],
        sink: Sink | None = None,
        active: Callable[[], bool] = lambda: True,
        per_minute: int = 10,
    ) -> None:
        """``by_bot(host, uuid)``: did the bot just act on it; ``name_of``: the VM's name for the message."""
        self.pool, self.incidents, self.by_bot, self.name_of = pool, incidents, by_bot, name_of
        self.sink, self.active, self.per_minute = sink, active, per_minute
        self.sent: list[float] = []
        self.held: list[Alert] = []  # alerts past the rate limit, said in one line when the burst ends
        self.window = 60.0  # seconds the rate limit counts over
        self.flusher: threading.Timer | None = None
        self.lock = threading.Lock()
        # Events arrive on libvirt's event-loop thread: queue them, never call libvirt or Slack from there.
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.worker = threading.Thread(target=self.work, name="alerts", daemon=True)
        self.worker.start()
        self.unsubscribe = pool.subscribe(lambda *event: self.queue.put(("vm", event)))
        self.watch = lambda *change: self.queue.put(("host", change))
        pool.host_watchers.append(self.watch)

    def close(self) -> None:
        self.unsubscribe()
        if self.watch in self.pool.host_watchers:
            self.pool.host_watchers.remove(self.watch)
        self.queue.put(None)
        with self.lock:
            if self.flusher:
                self.flusher.cancel()
        self.worker.join(self.pool.timeout + 1)  # an alert being posted finishes; then the thread ends

    def work(self) -> None:
        while (job := self.queue.get()) is not None:
            kind, args = job
            try:
                self.on_event(*args) if kind == "vm" else self.on_host(*args)
            except Exception:
                log.exception("alert handling failed")

    def on_event(self, host: str, uuid: str, event: int, detail: int) -> None:
        if not self.active():
            return
        key = f"vm:{host}/{uuid}"
        if event == E.VIR_DOMAIN_EVENT_STOPPED or event == E.VIR_DOMAIN_EVENT_CRASHED:
            crashed = event == E.VIR_DOMAIN_EVENT_CRASHED or detail in CRASHES
            if not crashed and self.by_bot(host, uuid):
                return  # someone asked for it through the bot: no surprise
            name = self.name_of(host, uuid)
            how = (
                "crashed" if crashed else f"{STOP_DETAIL.get(detail, 'stopped')} without anyone asking through the bot"
            )
            level = RED if crashed else AMBER
            text = f"{host}/{name} {how}"
            if self.incidents.open(key, "crash" if crashed else "shutoff", host, uuid, name, level, text):
                self.post(Alert(level, text))
        elif event in (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_RESUMED):
            row = self.incidents.close(key)
            if row:
                self.post(Alert(GREEN, f"recovered: {host}/{row['vm_name']} is running again"))

    def on_host(self, host: str, up: bool, reason: str) -> None:
        if not self.active():
            return
        key = f"host:{host}"
        if not up:
            text = f"host {host} stopped answering: {reason}"
            if self.incidents.open(key, "host", host, "", "", RED, text):
                self.post(Alert(RED, text))
        elif row := self.incidents.close(key):
            self.post(Alert(GREEN, f"recovered: host {host} answers again (away since {row['opened'][11:16]} UTC)"))

    def post(self, alert: Alert) -> None:
        """Rate-limited: past ``per_minute`` alerts are held; the next alert counts them, or, when the
        burst ends with none, one summary line says them as soon as the limit lets it."""
        with self.lock:
            now = time.monotonic()
            self.sent = [t for t in self.sent if now - t < self.window]
            if len(self.sent) >= self.per_minute:
                self.held.append(alert)
                if self.flusher is None:
                    self.flusher = threading.Timer(self.window - (now - self.sent[0]) + 0.05, self.flush)
                    self.flusher.daemon = True
                    self.flusher.start()
                return
            self.sent.append(now)
            held, self.held = len(self.held), []
        if held:
            alert = Alert(
                alert.level, f"{alert.text} ({held} more alert(s) were held back by the rate limit; see the digest)"
            )
        self.deliver(alert)

    def flush(self) -> None:
        """The burst is over: the alerts still held go out as one line, worst level first."""
        with self.lock:
            self.flusher = None
            held, self.held = self.held, []
            if not held:
                return  # a later alert already counted them
            self.sent.append(time.monotonic())
        self.deliver(summary(held))

    def deliver(self, alert: Alert) -> None:
        if self.sink is None:
            return
        try:
            self.sink(alert)
        except Exception:
            log.exception("alert not posted")

    def heartbeat(self, stop: threading.Event, every: float) -> None:
        """Ask every host now and then, so a host that stops answering is noticed without a command."""
        while not stop.wait(every):
            try:
                self.pool.fan_out(lambda _h, c: c.getLibVersion())
            except Exception:
                log.exception("heartbeat failed")
