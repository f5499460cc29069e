"""Which hosts hold an open connection, least recently used first, and which to close beyond a cap.

A connection costs memory in the bot (libvirt's state for it; with the test
driver the whole fleet file lives in our process) and a socket on the host.
At a thousand hosts that is most of the bot's memory, while a list reads the
inventory the bot keeps and opens nothing. So the pool keeps at most ``cap``
connections open: beyond it, the least recently used idle ones are closed, and
the next call to such a host opens it again. Only the choice lives here; the
pool decides what idle means and does the closing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable


class Recent:
    """Host names with an open connection, oldest use first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._order: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def used(self, host: str) -> None:
        """A call starts on the host's connection (or it was just opened): it is the most recent."""
        with self._lock:
            self._order[host] = None
            self._order.move_to_end(host)

    def gone(self, host: str) -> None:
        """The host's connection was closed, dropped or abandoned."""
        with self._lock:
            self._order.pop(host, None)

    def __len__(self) -> int:
        return len(self._order)

    def beyond(self, idle: Callable[[str], bool]) -> list[str]:
        """The least recently used hosts to close so that at most ``cap`` stay open, idle ones only.

        A host in use is skipped, never waited for: the cap may be passed for as long as the
        calls in flight need their connections (at most the fleet-wide call and connect slots).
        """
        with self._lock:
            over = len(self._order) - self.cap
            if over <= 0:
                return []
            picked = []
            for host in self._order:
                if len(picked) == over:
                    break
                if idle(host):
                    picked.append(host)
            for host in picked:
                del self._order[host]
            return picked
