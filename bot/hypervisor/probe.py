"""The prober: one thread per host that went down, trying it again every interval until it answers.

The pool used to start a new try each interval and abandon one stuck in a
wedged host's handshake, so threads piled up for as long as the host stayed
wedged. Here a try stuck in libvirt is waited for, never duplicated: at most
two threads per host (the loop and its one try), however long it stays down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import suppress

import libvirt

from bot.hypervisor.workers import Workers

log = logging.getLogger(__name__)


class Prober:
    """Lives with the pool once its host first goes down; ``wake()`` each time the host is marked down."""

    def __init__(
        self,
        host: str,
        is_down: Callable[[], bool],
        try_open: Callable[[], libvirt.virConnect],
        back: Callable[[libvirt.virConnect], None],
        closed: threading.Event,
        interval: float,
        timeout: float,
    ) -> None:
        self.name, self.is_down, self.try_open, self.back, self.closed = host, is_down, try_open, back, closed
        self.interval, self.timeout = interval, timeout
        self.woken = threading.Event()  # set when the host is marked down, and on close
        self.worker = Workers(f"probe-{host}-try", 1)
        self.attempt: Future[libvirt.virConnect] | None = None
        self.rounds, self.ticked = 0, threading.Condition()  # intervals probed so far; notified on each
        self.thread = threading.Thread(target=self._loop, name=f"probe-{host}", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self.woken.set()

    def _loop(self) -> None:
        while True:
            self.woken.wait()
            self.woken.clear()
            if self.closed.is_set():
                return
            while self.is_down() and not self.closed.wait(self.interval):
                if (conn := self._try()) is not None:
                    self.back(conn)
                with self.ticked:
                    self.rounds += 1
                    self.ticked.notify_all()

    def _try(self) -> libvirt.virConnect | None:
        """One try within the deadline; None while the host does not answer or the last try is still stuck."""
        if self.attempt is not None:
            if not self.attempt.done():
                return None  # still stuck in libvirt: wait for it, never start a second
            _discard(self.attempt)  # it answered after its deadline: not trusted, closed
        self.attempt = attempt = self.worker.submit(self.try_open)
        deadline = time.monotonic() + self.timeout
        while not self.closed.is_set() and (left := deadline - time.monotonic()) > 0:
            if wait([attempt], timeout=min(0.1, left)).done:  # in slices, so close() need not wait the deadline
                break
        if not attempt.done():
            log.info("host %s still down: no answer within %.1fs", self.name, self.timeout)
            return None
        self.attempt = None
        if (error := attempt.exception()) is not None:
            log.info("host %s still down: %s", self.name, error)
            return None
        return attempt.result()

    def close(self, timeout: float) -> None:
        """Stop the loop and join it; a try stuck in libvirt stays behind as an idle daemon thread."""
        self.woken.set()
        self.worker.retire()
        deadline = time.monotonic() + timeout
        self.thread.join(timeout)
        self.worker.join(max(0.0, deadline - time.monotonic()))


def _discard(attempt: Future) -> None:
    if attempt.exception() is None:
        with suppress(libvirt.libvirtError):
            attempt.result().close()
