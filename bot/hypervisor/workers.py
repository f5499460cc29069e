"""Threads and slots for calling hosts: workers made on demand, a fleet-wide cap, an attempt's own clock.

libvirt calls cannot be cancelled, so each host's calls run on its own threads
and the caller waits with a deadline. These pieces keep that cheap at a
thousand hosts: no idle threads per host, a bounded number of attempts in
flight, and a deadline that starts when the attempt does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Workers:
    """Up to ``size`` daemon threads, started on demand and gone after ``idle`` seconds without work.

    Unlike ThreadPoolExecutor, a hung one never blocks exit. Threads are made only
    when there is work for them, so a thousand hosts cost a thousand threads only
    while a thousand calls are actually running.
    """

    def __init__(self, name: str, size: int, idle: float = 2.0) -> None:
        self._name, self._size, self._idle_for = name, size, idle
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._threads = self._waiting = 0
        self._retired = False
        self._live: set[threading.Thread] = set()  # for join(): the threads running now

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            self._jobs.append((fn, future))
            if len(self._jobs) > self._waiting and self._threads < self._size:
                self._threads += 1
                thread = threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True)
                self._live.add(thread)
                thread.start()
            self._cond.notify()
        return future

    def retire(self) -> None:
        """Let threads end once the queue is empty; a thread stuck in libvirt stays stuck, harmlessly."""
        with self._cond:
            self._retired = True
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        """After retire(): wait for the threads to end; one stuck in libvirt is left, never waited for long."""
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._live)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> tuple[Callable[[], Any], Future] | None:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: self._jobs or self._retired, timeout=self._idle_for)
            self._waiting -= 1
            if not self._jobs:
                self._threads -= 1
                self._live.discard(threading.current_thread())
                return None
            return self._jobs.popleft()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)


class Slots:
    """A fleet-wide cap on attempts in flight; a slot is given back when its attempt ends or times out.

    A semaphore would stay held by a thread stuck in a silent host's handshake;
    here the waiter that gives up on an attempt frees its slot, so a few dead
    hosts never starve the rest of the fleet.
    """

    def __init__(self, size: int) -> None:
        self.size, self._free, self._cond = size, size, threading.Condition()

    def take(self) -> bool:
        with self._cond:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


class Attempt:
    """One call on one host: its clock starts when a worker starts it, not when it was queued."""

    def __init__(self, host: str, slots: Slots | None = None) -> None:
        self.host, self.slots = host, slots
        self.queued, self.started = time.monotonic(), 0.0
        self.future: Future = Future()
        self._freed = threading.Lock()

    def run(self, fn: Callable[[], T]) -> T:
        self.started = time.monotonic()
        return fn()

    def deadline(self, limit: float) -> float:
        """Started: its own limit. Still queued behind the host's own busy workers: the host is slow."""
        return (self.started or self.queued) + limit

    def free(self) -> None:
        """Give the slot back, once, whoever gets here first (the worker or the waiter giving up)."""
        if self.slots is not None and self._freed.acquire(blocking=False):
            self.slots.give()
