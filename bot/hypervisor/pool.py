"""One libvirt connection per host: opened lazily, reused, reopened when it drops.

libvirt calls cannot be cancelled, so every call runs on the host's own daemon
worker threads and the caller waits with a deadline. A host that misses the
deadline (or refuses the connection) is marked down: later calls are answered
at once with "unreachable since ..." while a probe thread re-opens it in the
background. That keeps one dead host from stalling a command about the others.
A host's deadline starts when its own attempt starts; fan-out caps how many
hosts are being opened and called at once, fleet-wide (bot/hypervisor/workers.py);
at most ``open_hosts`` connections stay open: the least recently used idle ones
beyond it are closed and opened again when next needed (bot/hypervisor/lru.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from bot import times
from bot.hypervisor.links import alive, close_link, own, start_event_loop
from bot.hypervisor.lru import Recent
from bot.hypervisor.probe import Prober
from bot.hypervisor.transport import refusal
from bot.hypervisor.workers import Attempt, Slots, Workers

log = logging.getLogger(__name__)
T = TypeVar("T")
Listener = Callable[[str, str, int, int], None]  # host, uuid, event, detail


class HostDown(Exception):
    """The host is marked unreachable; the message is what the user sees."""

    def __init__(self, host: str, since: float, reason: str) -> None:
        self.host, self.since, self.reason = host, since, reason
        super().__init__(f"{host}: unreachable since {times.hhmm(since)} ({reason})")


@dataclass
class Down:
    since: float
    reason: str


class _Host:
    def __init__(self, name: str, uri: str, workers: int, changes: int) -> None:
        self.name, self.uri = name, uri
        self.lock = threading.Lock()  # guards the fields; never held across a libvirt call
        self.opening = threading.Lock()  # one open at a time; replaced if an open hangs
        self.conn: libvirt.virConnect | None = None
        self.workers = Workers(f"host-{name}", workers)
        self.down: Down | None = None
        self.changes = threading.BoundedSemaphore(changes)
        self.opened = 0  # how many times a connection was opened; reconnects show here
        self.users = 0  # calls running on the connection, and pins (change_slot): never closed for the cap
        self.event_id: int | None = None  # the lifecycle callback of ``conn``: deregistered before a close
        self.prober: Prober | None = None  # started the first time the host goes down, then lives with the pool


class Pool:
    """The fleet's connections, with per-host deadlines and a circuit breaker."""

    def __init__(
        self,
        hosts: dict[str, str],
        timeout: float = 5.0,
        probe_interval: float = 10.0,
        changes_per_host: int = 4,
        workers_per_host: int = 4,
        connect_limit: int = 16,
        call_limit: int = 32,
        open_hosts: int = 256,
    ) -> None:
        start_event_loop()
        self._connects, self._calls = Slots(connect_limit), Slots(call_limit)
        self.timeout, self.probe_interval = timeout, probe_interval
        self._workers_per_host = workers_per_host
        self._hosts = {n: _Host(n, u, workers_per_host, changes_per_host) for n, u in hosts.items()}
        self._recent = Recent(open_hosts)  # hosts with an open connection, least recently used first
        self._listeners: list[Listener] = []
        self.observers: list[Callable[[str, float], None]] = []  # (host, seconds) per libvirt call
        self.host_watchers: list[Callable[[str, bool, str], None]] = []  # (host, up, reason) on down and back
        self._closed = threading.Event()

    @property
    def names(self) -> list[str]:
        return list(self._hosts)

    def host(self, name: str) -> _Host:
        return self._hosts[name]

    def uri(self, name: str) -> str:
        return self._hosts[name].uri

    def status(self, name: str) -> Down | None:
        return self._hosts[name].down

    def call(self, host: str, fn: Callable[[libvirt.virConnect], T], timeout: float | None = None) -> T:
        """Run ``fn(conn)`` on the host's worker; raise HostDown if it can't answer in time."""
        h = self._hosts[host]
        if h.down:
            raise HostDown(h.name, h.down.since, h.down.reason)
        limit = self.timeout if timeout is None else timeout
        attempt = self._start(h, Attempt(host), lambda c: fn(c))
        while True:
            try:
                return attempt.future.result(timeout=max(0.0, attempt.deadline(limit) - time.monotonic()))
            except TimeoutError:
                if time.monotonic() < attempt.deadline(limit):
                    continue  # it started meanwhile: its own clock decides
                raise self._silent(h, limit) from None

    def fan_out(
        self, fn: Callable[[str, libvirt.virConnect], T], hosts: list[str] | None = None
    ) -> dict[str, T | Exception]:
        """Ask many hosts; each host's answer or error within its own deadline, counted from its own start.

        At most ``connect_limit`` hosts are being opened and ``call_limit`` called
        at once, fleet-wide: a thousand opens in parallel would make each one slow
        and a healthy host look dead. The rest wait their turn, and waiting is
        never held against a host.
        """
        names = hosts if hosts is not None else self.names
        results: dict[str, Any] = {}
        to_open: deque[_Host] = deque()
        to_call: deque[_Host] = deque()
        for name in names:
            h = self._hosts[name]
            if h.down:
                results[name] = HostDown(name, h.down.since, h.down.reason)
            else:
                (to_call if h.conn is not None else to_open).append(h)
        wake = threading.Condition()
        running: list[Attempt] = []
        while to_open or to_call or running:
            for queue_, slots in ((to_call, self._calls), (to_open, self._connects)):
                while queue_ and slots.take():
                    h = queue_.popleft()
                    running.append(self._start(h, Attempt(h.name, slots), lambda c, n=h.name: fn(n, c), wake))
            running = self._harvest(running, results)
            if running or to_open or to_call:
                self._wait(wake, running, poll=bool(to_open or to_call))
        return {name: results[name] for name in names}

    def _start(
        self,
        h: _Host,
        attempt: Attempt,
        fn: Callable[[libvirt.virConnect], Any],
        wake: threading.Condition | None = None,
    ) -> Attempt:
        attempt.future = h.workers.submit(lambda: attempt.run(lambda: self._run(h, fn)))

        def ended(_f: Future) -> None:
            attempt.free()
            if wake is not None:
                with wake:
                    wake.notify_all()

        attempt.future.add_done_callback(ended)
        return attempt

    def _harvest(self, running: list[Attempt], results: dict[str, Any]) -> list[Attempt]:
        """Collect finished attempts; a host whose own attempt overran its deadline is down."""
        now, still = time.monotonic(), []
        for a in running:
            if a.future.done():
                error = a.future.exception()
                if error is not None and not isinstance(error, HostDown | libvirt.libvirtError):
                    raise error  # a bug in ``fn``, not the host's answer: never shown as "down"
                results[a.host] = error or a.future.result()
            elif now >= a.deadline(self.timeout):
                a.free()
                results[a.host] = self._silent(self._hosts[a.host], self.timeout)
            else:
                still.append(a)
        return still

    def _wait(self, wake: threading.Condition, running: list[Attempt], poll: bool) -> None:
        """Until an attempt ends, the next deadline, or (with hosts still queued) a short poll for free slots."""
        now = time.monotonic()
        until = min((a.deadline(self.timeout) for a in running), default=now + 0.05)
        wait = max(0.001, min(until - now, 0.05) if poll else until - now)
        with wake:
            wake.wait_for(lambda: any(a.future.done() for a in running), timeout=wait)

    def _silent(self, h: _Host, limit: float) -> HostDown:
        self._mark_down(h, f"no answer within {limit:g}s")
        down = h.down or Down(time.time(), f"no answer within {limit:g}s")
        return HostDown(h.name, down.since, down.reason)

    @contextmanager
    def change_slot(self, host: str) -> Iterator[None]:
        """Cap concurrent state changes per host, so a glob cannot start a boot storm.

        The host's connection is pinned meanwhile: a shutdown's wait for its event and an attached
        console live on it between calls, so the open-connection cap never closes it under them.
        """
        h = self._hosts[host]
        with h.changes:
            self._use(h, 1)
            try:
                yield
            finally:
                self._use(h, -1)

    def open_count(self) -> int:
        """How many hosts hold an open connection now (the cap is ``open_hosts``, passed only while in use)."""
        return sum(1 for h in self._hosts.values() if h.conn is not None)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Receive lifecycle events (host, uuid, event, detail) from every host."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def close(self) -> None:
        """Close every connection and stop this pool's threads: probers and idle workers are joined.

        A thread stuck inside libvirt on a wedged host cannot be stopped; it stays a daemon
        and ends with the process. (libvirt's event loop is the process's, not the pool's.)
        """
        self._closed.set()
        deadline = time.monotonic() + min(1.0, self.timeout)
        for h in self._hosts.values():
            with h.lock:
                conn, h.conn, event_id, h.event_id = h.conn, None, h.event_id, None
            if conn is not None:
                close_link(conn, event_id)
            h.workers.retire()
            if h.prober is not None:
                h.prober.close(max(0.0, deadline - time.monotonic()))
        for h in self._hosts.values():
            h.workers.join(max(0.0, deadline - time.monotonic()))

    # -- inside the host's worker threads ---------------------------------

    def _run(self, h: _Host, fn: Callable[[libvirt.virConnect], T]) -> T:
        self._use(h, 1)  # from here on the cap never closes this host's connection
        try:
            conn = self._connection(h)
            self._recent.used(h.name)
            started = time.monotonic()
            try:
                return fn(conn)
            except libvirt.libvirtError:
                if alive(conn):
                    raise
                self._drop(h, conn)  # the connection died under us: reopen on next use
                raise
            finally:
                for observe in self.observers:
                    observe(h.name, time.monotonic() - started)
        finally:
            self._use(h, -1)

    def _use(self, h: _Host, n: int) -> None:
        with h.lock:
            h.users += n
        if n < 0 and len(self._recent) > self._recent.cap:  # passed while calls needed their connections
            self._trim()

    def _trim(self) -> None:
        """Close the least recently used idle connections beyond ``open_hosts``, each on its host's worker."""
        for name in self._recent.beyond(lambda n: self._hosts[n].users == 0):
            h = self._hosts[name]
            with h.lock:
                if h.users or h.conn is None:
                    conn = None
                else:
                    conn, h.conn, event_id, h.event_id = h.conn, None, h.event_id, None
            if conn is None:
                if h.conn is not None:
                    self._recent.used(name)  # a call started meanwhile: it stays, counted again
                continue
            h.workers.submit(lambda c=conn, e=event_id: close_link(c, e))

    def _connection(self, h: _Host) -> libvirt.virConnect:
        conn = h.conn
        if conn is not None and alive(conn):
            return conn
        with h.opening:
            conn = h.conn
            if conn is not None and alive(conn):
                return conn
            if conn is not None:
                self._drop(h, conn)
            try:
                conn = self._open(h)
            except libvirt.libvirtError as e:
                self._mark_down(h, refusal(h.uri, e.get_error_message() or str(e)))
                raise HostDown(h.name, h.down.since, h.down.reason) from None  # type: ignore[union-attr]
            with h.lock:
                h.conn, h.opened = conn, h.opened + 1
            self._recent.used(h.name)
            self._trim()
            return conn

    def _open(self, h: _Host) -> libvirt.virConnect:
        conn = own(h.uri)
        try:
            conn.registerCloseCallback(lambda c, reason, _o: self._drop(h, c), None)
        except libvirt.libvirtError:
            pass  # local drivers have no close callback; isAlive() still tells
        h.event_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, h.name)
        return conn

    def _on_event(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int, host: str) -> None:
        uuid = dom.UUIDString()
        for listener in list(self._listeners):
            try:
                listener(host, uuid, event, detail)
            except Exception:
                log.exception("event listener failed")

    def _drop(self, h: _Host, conn: Any) -> None:
        """A dead connection leaves the host; closed on the host's worker (never in libvirt's close callback,
        which calls this), its lifecycle callback first: otherwise libvirt never frees it, one per reconnect."""
        with h.lock:
            if h.conn is not conn:
                return
            h.conn, event_id, h.event_id = None, h.event_id, None
        self._recent.gone(h.name)
        h.workers.submit(lambda: close_link(conn, event_id))

    # -- circuit breaker -------------------------------------------------

    def _mark_down(self, h: _Host, reason: str) -> None:
        with h.lock:
            if h.down:
                return
            h.down = Down(time.time(), reason)
            h.conn = None  # a hung connection is abandoned, never closed from here
            h.opening = threading.Lock()  # a hung open may hold the old one forever
            h.workers.retire()
            h.workers = Workers(f"host-{h.name}", self._workers_per_host)
            if h.prober is None:  # under the lock: whoever sees the host down also finds its prober
                h.prober = Prober(
                    h.name, lambda: h.down is not None, lambda: self._answering(h), lambda conn: self._back(h, conn),
                    self._closed, self.probe_interval, self.timeout,
                )  # fmt: skip
            h.prober.wake()
        self._recent.gone(h.name)
        log.warning("host %s marked down: %s", h.name, reason)
        self._tell(h.name, False, reason)

    def _back(self, h: _Host, conn: libvirt.virConnect) -> None:
        """The prober's try answered within the deadline: the host is up again."""
        with h.lock:
            h.conn, h.down, h.opened = conn, None, h.opened + 1
        self._recent.used(h.name)
        self._trim()
        log.warning("host %s is back", h.name)
        self._tell(h.name, True, "")

    def _tell(self, host: str, up: bool, reason: str) -> None:
        for watch in list(self.host_watchers):
            try:
                watch(host, up, reason)
            except Exception:
                log.exception("host watcher failed")

    def _answering(self, h: _Host) -> libvirt.virConnect:
        conn = self._open(h)
        conn.getLibVersion()  # an open that succeeds is not yet an answer
        return conn
