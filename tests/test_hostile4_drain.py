"""Closing the Slack adapter drains the ack path before the work pool: a listener acks first and submits
its work after (``ack()`` then ``later()``), so a listener still between the two when ``close`` began found
the work pool already shut: the command was acked and never ran, and nobody was told. Real adapter, real
pools, the fake Web API; the listener is held between its ack and its submit by an event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from bot.service import Bot
from handlers.slack.app import SlackAdapter
from tests.slackrig import start_rig


def work_refuses(submit: Callable[[Callable[[], None]], object], wait: float) -> bool:
    """Whether the work pool refuses new work within ``wait`` s (polling a real state change)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            submit(lambda: None)
        except RuntimeError:
            return True
        time.sleep(0.01)
    return False


def test_work_a_listener_submits_after_its_ack_still_runs_when_the_adapter_closes(make_bot: Callable[..., Bot]) -> None:
    rigs = start_rig(make_bot())
    try:
        closes_cleanly(next(rigs).adapter)
    finally:
        rigs.close()


def closes_cleanly(adapter: SlackAdapter) -> None:
    between, go, ran = threading.Event(), threading.Event(), threading.Event()

    def listener() -> None:  # what on_command does: ack() has returned; later() comes next
        between.set()
        assert go.wait(30)
        adapter.submit(ran.set)

    held: Future = adapter.listeners.submit(listener)
    assert between.wait(10)
    closing = threading.Thread(target=adapter.close)
    closing.start()
    work_refuses(adapter.work.submit, 1.0)  # the old order shut the work pool here, under the listener
    go.set()
    closing.join(30)
    assert not closing.is_alive()
    assert held.exception(0) is None and ran.is_set()
