"""The ack path never waits for the work after other acks (issue 9: ack latency at 20 in flight).

What made acks slow was found with bench/ack_latency.py (`vmbot run --http` in its own
process): thread pools started threads inside submit, under a lock every executor shares;
work after the ack competed with acks for the GIL; the replay guard copied everything it
remembered on each request; a full garbage collection walked the start-up heap. These pin
each fix; the bench measures the result.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

import pytest

from handlers.slack.ackfirst import AckFirst
from handlers.slack.run import settle_heap
from handlers.slack.seen import Seen
from handlers.slack.threads import Prestarted


def test_hostile_submit_starts_no_thread_all_are_started_up_front() -> None:
    pool = Prestarted(6, "t-ack")
    try:
        before = threading.active_count()
        futures = [pool.submit(time.sleep, 0.05) for _ in range(12)]  # more calls than threads, all at once
        assert threading.active_count() == before
        assert all(f.result(timeout=10) is None for f in futures)
        assert sum(t.name.startswith("t-ack_") for t in threading.enumerate()) == 6
    finally:
        pool.shutdown()


def test_a_failing_call_is_carried_by_its_future_and_the_thread_goes_on() -> None:
    pool = Prestarted(1, "t-fail")
    try:
        bad = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result(timeout=10)
        assert pool.submit(lambda x: x + 1, 41).result(timeout=10) == 42
    finally:
        pool.shutdown()


def test_shutdown_runs_what_was_queued_then_refuses_more() -> None:
    pool = Prestarted(1, "t-stop")
    done: list[int] = []
    for i in range(5):
        pool.submit(lambda i=i: (time.sleep(0.01), done.append(i)))
    pool.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4]
    assert not any(t.name.startswith("t-stop_") for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        pool.submit(print)


def test_hostile_a_call_submitted_while_the_pool_shuts_down_runs_or_is_refused_never_lost() -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes: the race shows within a few rounds
    try:
        _submit_while_shutting_down()
    finally:
        sys.setswitchinterval(switch)


def _submit_while_shutting_down() -> None:
    for round_ in range(100):
        pool = Prestarted(2, f"t-race{round_}")
        accepted: list = []
        refused: list[int] = []
        go = threading.Barrier(5)

        def submitter(
            refused: list[int] = refused, accepted: list = accepted, pool: Prestarted = pool, go: threading.Barrier = go
        ) -> None:
            go.wait()
            for _ in range(200):
                try:
                    accepted.append(pool.submit(int))
                except RuntimeError:
                    refused.append(1)

        threads = [threading.Thread(target=submitter) for _ in range(4)]
        for t in threads:
            t.start()
        go.wait()
        pool.shutdown(wait=True)
        for t in threads:
            t.join(10)
        assert len(accepted) + len(refused) == 800
        assert all(f.done() for f in accepted), "a call accepted after the stop markers never ran"


def test_hostile_work_waits_while_a_request_is_being_acked() -> None:
    gate = AckFirst(patience=30.0, quiet=0.0)
    started = threading.Event()
    waited: list[bool] = []
    with gate.acking():
        worker = threading.Thread(target=lambda: (waited.append(gate.wait_turn()), started.set()))
        worker.start()
        assert not started.wait(0.3), "work started while a request was still being acked"
    assert started.wait(10) and waited == [True]
    worker.join()


def test_a_steady_stream_of_acks_does_not_starve_work() -> None:
    gate = AckFirst(patience=0.2)
    with gate.acking():
        began = time.monotonic()
        assert gate.wait_turn() is False  # patience ran out: the work goes ahead anyway
        assert time.monotonic() - began < 10
    time.sleep(gate.quiet)
    assert gate.wait_turn() is True


def test_many_waiting_work_items_all_go_once_acks_are_done() -> None:
    gate = AckFirst(patience=30.0, quiet=0.01)
    results: list[bool] = []
    with gate.acking():
        workers = [threading.Thread(target=lambda: results.append(gate.wait_turn())) for _ in range(20)]
        for w in workers:
            w.start()
    for w in workers:
        w.join(10)
    assert results == [True] * 20


def test_hostile_a_repeat_inside_the_window_is_refused_and_old_keys_are_forgotten() -> None:
    seen = Seen(window=0.2)
    assert seen.first(["a"]) and seen.first(["b", "c"])
    assert not seen.first(["a"]) and not seen.first(["x", "c"])  # any key seen before refuses the delivery
    assert seen.first(["x"])  # "x" came with a refused delivery: it was not remembered then
    time.sleep(0.25)
    assert seen.first(["d"])  # forgetting happens on the way
    assert len(seen) == 1  # a, b, c (and x) are gone: memory follows the window, not the history
    assert seen.first(["a"])


def test_settle_heap_sets_the_start_up_heap_aside() -> None:
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
