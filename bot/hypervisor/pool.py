"""One libvirt connection per host: opened lazily, reused, reopened when it drops.

libvirt calls cannot be cancelled, so every call runs on the host's own daemon
worker threads and the caller waits with a deadline. A host that misses the
deadline (or refuses the connection) is marked down: later calls are answered
at once with "unreachable since ..." while a probe thread re-opens it in the
background. That keeps one dead host from stalling a command about the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import libvirt

from bot.hypervisor.transport import opened, refusal

log = logging.getLogger(__name__)
T = TypeVar("T")
Listener = Callable[[str, str, int, int], None]  # host, uuid, event, detail

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once.

    Keepalive, close callbacks, lifecycle events and console streams all need
    it, and it must be registered before the first connection opens.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _run_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class HostDown(Exception):
    """The host is marked unreachable; the message is what the user sees."""

    def __init__(self, host: str, since: float, reason: str) -> None:
        self.host, self.since, self.reason = host, since, reason
        when = datetime.fromtimestamp(since).strftime("%H:%M")
        super().__init__(f"{host}: unreachable since {when} ({reason})")


class _Workers:
    """A few daemon threads; unlike ThreadPoolExecutor, a hung one never blocks exit."""

    def __init__(self, name: str, size: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._size = size
        for i in range(size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future

    def retire(self) -> None:
        """Ask idle threads to stop; a thread stuck in libvirt stays stuck, harmlessly."""
        for _ in range(self._size):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)


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
        self.workers = _Workers(f"host-{name}", workers)
        self.down: Down | None = None
        self.changes = threading.BoundedSemaphore(changes)
        self.opened = 0  # how many times a connection was opened; reconnects show here


class Pool:
    """The fleet's connections, with per-host deadlines and a circuit breaker."""

    def __init__(
        self,
        hosts: dict[str, str],
        timeout: float = 5.0,
        probe_interval: float = 10.0,
        changes_per_host: int = 4,
        workers_per_host: int = 4,
    ) -> None:
        start_event_loop()
        self.timeout, self.probe_interval = timeout, probe_interval
        self._workers_per_host = workers_per_host
        self._hosts = {n: _Host(n, u, workers_per_host, changes_per_host) for n, u in hosts.items()}
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
        future = h.workers.submit(lambda: self._run(h, fn))
        try:
            return future.result(timeout=limit)
        except TimeoutError:
            self._mark_down(h, f"no answer within {limit:g}s")
            raise HostDown(h.name, h.down.since, h.down.reason) from None  # type: ignore[union-attr]

    def fan_out(
        self, fn: Callable[[str, libvirt.virConnect], T], hosts: list[str] | None = None
    ) -> dict[str, T | Exception]:
        """Ask many hosts at once; each answer or error comes back within one shared deadline."""
        names = hosts if hosts is not None else self.names
        deadline = time.monotonic() + self.timeout
        futures: dict[str, Future | Exception] = {}
        for name in names:
            h = self._hosts[name]
            if h.down:
                futures[name] = HostDown(name, h.down.since, h.down.reason)
            else:
                futures[name] = h.workers.submit(lambda h=h: self._run(h, lambda c: fn(h.name, c)))
        return {name: self._collect(name, f, deadline) for name, f in futures.items()}

    def _collect(self, name: str, future: Future | Exception, deadline: float) -> Any:
        if isinstance(future, Exception):
            return future
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            h = self._hosts[name]
            self._mark_down(h, f"no answer within {self.timeout:g}s")
            return HostDown(name, h.down.since, h.down.reason)  # type: ignore[union-attr]
        except Exception as e:
            return e

    @contextmanager
    def change_slot(self, host: str) -> Iterator[None]:
        """Cap concurrent state changes per host, so a glob cannot start a boot storm."""
        sem = self._hosts[host].changes
        with sem:
            yield

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Receive lifecycle events (host, uuid, event, detail) from every host."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def close(self) -> None:
        self._closed.set()
        for h in self._hosts.values():
            with h.lock:
                conn, h.conn = h.conn, None
            if conn is not None:
                with suppress(libvirt.libvirtError):
                    conn.close()
            h.workers.retire()

    # -- inside the host's worker threads ---------------------------------

    def _run(self, h: _Host, fn: Callable[[libvirt.virConnect], T]) -> T:
        conn = self._connection(h)
        started = time.monotonic()
        try:
            return fn(conn)
        except libvirt.libvirtError:
            if _alive(conn):
                raise
            self._drop(h, conn)  # the connection died under us: reopen on next use
            raise
        finally:
            for observe in self.observers:
                observe(h.name, time.monotonic() - started)

    def _connection(self, h: _Host) -> libvirt.virConnect:
        conn = h.conn
        if conn is not None and _alive(conn):
            return conn
        with h.opening:
            conn = h.conn
            if conn is not None and _alive(conn):
                return conn
            try:
                conn = self._open(h)
            except libvirt.libvirtError as e:
                self._mark_down(h, refusal(h.uri, e.get_error_message() or str(e)))
                raise HostDown(h.name, h.down.since, h.down.reason) from None  # type: ignore[union-attr]
            with h.lock:
                h.conn, h.opened = conn, h.opened + 1
            return conn

    def _open(self, h: _Host) -> libvirt.virConnect:
        conn = libvirt.open(opened(h.uri))
        if _is_remote(h.uri):
            conn.setKeepAlive(5, 3)
        try:
            conn.registerCloseCallback(lambda c, reason, _o: self._drop(h, c), None)
        except libvirt.libvirtError:
            pass  # local drivers have no close callback; isAlive() still tells
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, h.name)
        return conn

    def _on_event(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int, host: str) -> None:
        uuid = dom.UUIDString()
        for listener in list(self._listeners):
            try:
                listener(host, uuid, event, detail)
            except Exception:
                log.exception("event listener failed")

    def _drop(self, h: _Host, conn: Any) -> None:
        if h.conn is conn:
            h.conn = None

    # -- circuit breaker -------------------------------------------------

    def _mark_down(self, h: _Host, reason: str) -> None:
        with h.lock:
            if h.down:
                return
            h.down = Down(time.time(), reason)
            h.conn = None  # a hung connection is abandoned, never closed from here
            h.opening = threading.Lock()  # a hung open may hold the old one forever
            h.workers.retire()
            h.workers = _Workers(f"host-{h.name}", self._workers_per_host)
        log.warning("host %s marked down: %s", h.name, reason)
        self._tell(h.name, False, reason)
        threading.Thread(target=self._probe, args=(h,), name=f"probe-{h.name}", daemon=True).start()

    def _probe(self, h: _Host) -> None:
        """Re-open the host in the background until it answers within the deadline again."""
        while not self._closed.wait(self.probe_interval):
            worker = _Workers(f"probe-{h.name}", 1)
            future = worker.submit(lambda: self._answering(h))
            worker.retire()
            try:
                conn = future.result(timeout=self.timeout)
            except Exception:
                continue
            with h.lock:
                h.conn, h.down, h.opened = conn, None, h.opened + 1
            log.warning("host %s is back", h.name)
            self._tell(h.name, True, "")
            return

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


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except Exception:
        return False


def _is_remote(uri: str) -> bool:
    return "+" in uri.split(":", 1)[0] or uri.split("://", 1)[-1][:1] not in ("/", "")
