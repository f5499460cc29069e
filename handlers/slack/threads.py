"""A thread pool whose threads all start up front, for the ack path and the work after it.

``concurrent.futures.ThreadPoolExecutor`` starts its threads lazily, inside
``submit``, holding a lock shared by every executor in the process and waiting
for the new thread to run. At a burst of commands the ack path (Bolt's listener
pool) and the work after the ack (which Bolt's listeners submit) both grew their
pools at once, so an ack waited for threads being started for other requests'
work: the slow tail of the ack latency. Here ``submit`` only puts on a queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

log = logging.getLogger(__name__)
_STOP = None


class Prestarted(Executor):
    """``workers`` daemon threads started now, taking calls from one queue in order."""

    def __init__(self, workers: int, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._gate = threading.Lock()  # a call is queued before the stop markers or refused, never after them
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._gate:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Calls already queued still run (their replies are owed); then every thread ends."""
        with self._gate:
            self._closed = True
            for _ in self._threads:
                self._calls.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not _STOP:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # the future carries it, as ThreadPoolExecutor's does
                future.set_exception(e)
