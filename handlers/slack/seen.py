"""What Slack delivered in the last few minutes, to run each request once.

Every key lives the same window, so the oldest entry always expires first:
forgetting costs a look at the front, not a copy of everything remembered (the
copy per request was O(n) on the ack path, under a lock every ack takes).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable


class Seen:
    """Keys remembered for ``window`` seconds; ``first`` is True only for keys none of which was seen."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, keys: Iterable[str]) -> bool:
        keys = list(keys)
        now = time.monotonic()
        with self._lock:
            while self._until and next(iter(self._until.values())) <= now:
                self._until.popitem(last=False)
            if any(k in self._until for k in keys):
                return False
            for key in keys:
                self._until[key] = now + self.window
        return True

    def __len__(self) -> int:
        return len(self._until)
