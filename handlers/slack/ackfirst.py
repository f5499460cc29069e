"""Acks before work: work after the ack waits while other requests are being acked.

Slack allows 3 s for an ack and nothing for the work after it, but both run in
this one process, on one GIL and the machine's cores. The work costs several
times the CPU of an ack (parsing, the policy, libvirt, the audit's writes, Web
API posts), so at 20 commands in flight acks queued behind it: p99 was 2-3x a
no-op Bolt app's. Work waits to start until no request has been between arrival
and ack for ``quiet`` seconds (a burst of commands is acked first), for at most
``patience`` seconds (a steady stream must not starve it); once started it is
never held back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class AckFirst:
    """Counts requests being acked; ``wait_turn`` holds work back while there are any, or were just now."""

    def __init__(self, patience: float = 1.0, quiet: float = 0.02) -> None:
        self.patience, self.quiet = patience, quiet
        self._acking = 0
        self._last = 0.0  # monotonic time the last ack ended
        self._cond = threading.Condition()
        self._turn = threading.Lock()  # one work item waits on the condition, the rest on this lock: no herd

    @contextmanager
    def acking(self) -> Iterator[None]:
        """Around one request, from its arrival until its ack is sent."""
        with self._cond:
            self._acking += 1
        try:
            yield
        finally:
            with self._cond:
                self._acking -= 1
                self._last = time.monotonic()
                if self._acking == 0:
                    self._cond.notify_all()

    def wait_turn(self) -> bool:
        """Before work after an ack: True once acks have been quiet a moment, False if patience ran out."""
        deadline = time.monotonic() + self.patience
        if not self._turn.acquire(timeout=self.patience):
            return False
        try:
            return self._wait_quiet(deadline)
        finally:
            self._turn.release()

    def _wait_quiet(self, deadline: float) -> bool:
        with self._cond:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return False
                if self._acking == 0 and now - self._last >= self.quiet:
                    return True
                wait = deadline - now if self._acking else min(deadline - now, self._last + self.quiet - now)
                self._cond.wait(wait)
