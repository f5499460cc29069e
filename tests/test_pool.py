"""The connection pool: reuse, reconnect, fan-out past a refusing and a silent host, probe, change cap.

The silent host is a real TCP listener on 127.0.0.1 that accepts and never
answers, so libvirt's own client hangs in its handshake exactly as it would on
a wedged libvirtd; nothing in the pool is mocked.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from bot.config import demo
from bot.hypervisor.pool import HostDown, Pool
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, audit_rows, write_fleet
from tests.fakehosts import closed_port, silent_listener

TIMEOUT = 1.0
SINCE = r"unreachable since \d\d:\d\d UTC"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections and never says a word."""
    listener, held = silent_listener()
    yield listener.getsockname()[1]
    listener.close()  # the hung libvirt clients get EOF and their worker threads end
    for conn in held:
        conn.close()


@pytest.fixture
def wide_bot(make_bot: Callable[..., Bot], silent_port: int) -> Bot:
    """The demo fleet plus a host that refuses connections and one that never answers."""
    config = demo()
    config.hosts["kvm03"] = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    config.hosts["kvm04"] = f"qemu+tcp://127.0.0.1:{silent_port}/system"
    return make_bot(config, host_timeout=TIMEOUT, probe_interval=60.0)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def test_one_connection_per_host_is_reused(demo_bot: Bot, actor: Actor) -> None:
    for text in ("list --all", "state centos7", "start centos7", "info centos7", "hosts"):
        assert demo_bot.handle(text, actor).status is Status.OK, text
    assert demo_bot.pool.host("kvm01").opened == 1
    assert demo_bot.pool.host("kvm02").opened == 1


def test_connection_closed_underneath_is_reopened_on_next_use(demo_bot: Bot, actor: Actor) -> None:
    assert demo_bot.handle("state ubuntu20", actor).status is Status.OK
    host = demo_bot.pool.host("kvm01")
    assert host.opened == 1 and host.conn is not None
    host.conn.close()  # the connection drops under the pool, as a restarted libvirtd would do
    reply = demo_bot.handle("suspend ubuntu20", actor)
    assert (reply.status, reply.headline) == (Status.OK, "kvm01/ubuntu20: paused")
    assert host.opened == 2
    assert demo_bot.handle("state ubuntu20", actor).headline.startswith("ubuntu20 on kvm01: paused (user)")


def test_fan_out_answers_past_a_refusing_and_a_silent_host(wide_bot: Bot, actor: Actor) -> None:
    reply, took = timed(lambda: wide_bot.handle("list --all", actor))
    assert took <= TIMEOUT + 0.5
    assert reply.status is Status.OK  # type: ignore[union-attr]
    assert reply.headline == "7 VMs on 2 host(s); 2 host(s) did not answer"  # type: ignore[union-attr]
    down = reply.listing.down  # type: ignore[union-attr]
    assert re.fullmatch(rf"kvm03: {SINCE} \(.*Connection refused.*\)", down["kvm03"])
    assert re.fullmatch(rf"kvm04: {SINCE} \(no answer within 1s\)", down["kvm04"])
    assert wide_bot.pool.status("kvm04") is not None

    again, took = timed(lambda: wide_bot.handle("list --all", actor))
    assert took <= 0.5
    assert again.listing.down == down  # type: ignore[union-attr]
    assert [r.ref.name for r in again.listing.hosts["kvm02"]] == ["app-server", "centos7-template", "db-server"]  # type: ignore[union-attr]


def test_a_marked_down_host_is_answered_at_once(wide_bot: Bot, actor: Actor) -> None:
    with pytest.raises(HostDown) as first:
        wide_bot.pool.call("kvm04", lambda c: c.getLibVersion())
    assert re.fullmatch(rf"kvm04: {SINCE} \(no answer within 1s\)", str(first.value))
    started = time.monotonic()
    with pytest.raises(HostDown):
        wide_bot.pool.call("kvm04", lambda c: c.getLibVersion())
    assert time.monotonic() - started < 0.1
    reply, took = timed(lambda: wide_bot.handle("start centos7", actor))
    assert took < 0.5 and reply.headline == "kvm01/centos7: started"  # type: ignore[union-attr]
    hosts = wide_bot.handle("hosts", actor)
    assert hosts.lines[0].startswith("kvm01 (test): up, libvirt ")
    assert re.fullmatch(rf"kvm03 \(tcp\): {SINCE} \(.*Connection refused.*\)", hosts.lines[2])
    assert re.fullmatch(rf"kvm04 \(tcp\): {SINCE} \(no answer within 1s\)", hosts.lines[3])


def test_a_command_scoped_to_one_host_never_waits_for_a_silent_one(wide_bot: Bot, actor: Actor) -> None:
    reply, took = timed(lambda: wide_bot.handle("suspend kvm01/ubuntu20", actor))
    assert took < 0.5 and reply.headline == "kvm01/ubuntu20: paused"  # type: ignore[union-attr]
    assert wide_bot.pool.status("kvm04") is None  # it was never asked


def test_unknown_vm_names_the_hosts_that_were_not_asked(wide_bot: Bot, actor: Actor) -> None:
    reply = wide_bot.handle("start nosuchvm", actor)
    assert reply.status is Status.REFUSED
    assert reply.headline.startswith("no VM named 'nosuchvm' (not asked: kvm03: unreachable since")


def test_background_probe_brings_a_host_back(make_bot: Callable[..., Bot], actor: Actor, tmp_path: Path) -> None:
    """A test-driver host whose fleet file does not exist yet refuses to open, like a host still booting."""
    late = tmp_path / "late.xml"
    config = demo()
    config.hosts["late"] = f"test://{late}"
    bot = make_bot(config, host_timeout=TIMEOUT, probe_interval=0.05)
    first = bot.handle("list --all", actor)
    assert "late" in first.listing.down  # type: ignore[union-attr]
    write_fleet(late, [Vm("newcomer")])
    prober = bot.pool.host("late").prober
    assert prober is not None
    with prober.ticked:  # each probe round notifies: wait for the one that re-opened the host
        assert prober.ticked.wait_for(lambda: bot.pool.status("late") is None, timeout=5)
    back = bot.handle("list --all", actor)
    assert back.listing.down == {}  # type: ignore[union-attr]
    assert [r.ref.name for r in back.listing.hosts["late"]] == ["newcomer"]  # type: ignore[union-attr]
    assert bot.pool.host("late").opened == 1


def test_a_wedged_host_keeps_one_prober_however_long_it_stays_wedged(
    make_bot: Callable[..., Bot], actor: Actor
) -> None:
    """Forty probe intervals against a host that accepts and never answers: one try in flight, never a pile."""
    listener, held = silent_listener()
    try:
        config = demo()
        config.hosts["kvm04"] = f"qemu+tcp://127.0.0.1:{listener.getsockname()[1]}/system"
        bot = make_bot(config, host_timeout=0.3, probe_interval=0.02)
        before = {t.name for t in threading.enumerate()}
        assert "kvm04" in bot.handle("hosts", actor).text() and bot.pool.status("kvm04") is not None
        prober = bot.pool.host("kvm04").prober
        assert prober is not None
        with prober.ticked:
            assert prober.ticked.wait_for(lambda: prober.rounds >= 40, timeout=30)
        probing = sorted(t.name for t in threading.enumerate() if t.name.startswith("probe-kvm04"))
        assert probing == ["probe-kvm04", "probe-kvm04-try-1"]
        assert len(held) <= 2  # the command's connection and the one stuck try, not one per interval
        grown = {t.name for t in threading.enumerate()} - before
        assert len(grown) <= 2 + 4, grown  # the prober, its try, the host's fresh workers
        bot.close()
        assert not prober.thread.is_alive()
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_after_close_no_thread_of_the_bot_is_left(make_bot: Callable[..., Bot], actor: Actor, tmp_path: Path) -> None:
    """Workers, the prober of a host that was down and came back, and the events watcher: all joined."""
    before = set(threading.enumerate())  # other tests' leftovers are not this bot's
    late = tmp_path / "late.xml"
    config = demo()
    config.hosts["late"] = f"test://{late}"
    bot = make_bot(config, host_timeout=TIMEOUT, probe_interval=0.02)
    bot.events.watch()
    assert "late" in bot.handle("list --all", actor).listing.down  # type: ignore[union-attr]
    write_fleet(late, [Vm("newcomer")])
    prober = bot.pool.host("late").prober
    assert prober is not None
    with prober.ticked:
        assert prober.ticked.wait_for(lambda: bot.pool.status("late") is None, timeout=10)
    assert bot.handle("start centos7", actor).status is Status.OK
    started = {t.name for t in set(threading.enumerate()) - before}
    assert {"probe-late", "probe-late-try-1", "host-kvm01-1"} <= started, started
    bot.close()
    left = [t.name for t in set(threading.enumerate()) - before if t.name != "libvirt-events"]
    assert left == [], left  # libvirt's event loop is the process's, started once, not the bot's


def test_changes_per_host_caps_concurrency() -> None:
    pool = Pool(demo().hosts, timeout=TIMEOUT, changes_per_host=2)
    gate, lock, changed = threading.Event(), threading.Condition(), threading.Event()
    inside, peak = [0], [0]

    def change() -> None:
        with pool.change_slot("kvm01"):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
                lock.notify_all()
            gate.wait(10)
            with lock:
                inside[0] -= 1
        changed.set()

    threads = [threading.Thread(target=change) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        with lock:
            assert lock.wait_for(lambda: inside[0] == 2, timeout=5)
        assert not pool.host("kvm01").changes.acquire(blocking=False)  # both slots are taken
        with pool.change_slot("kvm02"):  # another host is not held back
            pass
        assert not changed.is_set()
        gate.set()
        for t in threads:
            t.join(10)
        assert peak[0] == 2 and inside[0] == 0
    finally:
        gate.set()
        pool.close()


def test_a_batch_waits_for_a_free_change_slot(make_bot: Callable[..., Bot], actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm(f"v{i}") for i in range(3)]}, changes_per_host=1)
    done: list[object] = []
    with bot.pool.change_slot("h1"):  # somebody else's change holds the only slot
        worker = threading.Thread(target=lambda: done.append(bot.handle("suspend v0 v1 v2", actor)))
        worker.start()
        deadline = time.monotonic() + 10
        while len(rows := audit_rows(bot)) < 3:  # the batch's rows are written before it asks for a slot
            assert time.monotonic() < deadline and worker.is_alive(), rows
            time.sleep(0.01)  # polling a real condition (the audit file), not standing in for one
        assert [(r["vm_name"], r["result"]) for r in rows] == [("v0", None), ("v1", None), ("v2", None)]
        assert worker.is_alive() and {r.state.name for r in bot.fleet.inventory().rows} == {"running"}
    worker.join(10)
    assert done[0].headline == "suspend: 3 of 3 done"  # type: ignore[attr-defined]
    assert {r.state.name for r in bot.fleet.inventory().rows} == {"paused"}


def test_subscribers_receive_lifecycle_events(demo_bot: Bot, actor: Actor) -> None:
    seen: list[tuple[str, str, int]] = []
    got = threading.Event()

    def listener(host: str, uuid: str, event: int, _detail: int) -> None:
        seen.append((host, uuid, event))
        got.set()

    unsubscribe = demo_bot.pool.subscribe(listener)
    demo_bot.handle("state centos7", actor)  # opens kvm01 so its events are registered
    demo_bot.handle("start centos7", actor)
    assert got.wait(5)
    assert ("kvm01", "249d5dd9-c072-50c2-91bd-f51da178d55b", libvirt.VIR_DOMAIN_EVENT_STARTED) in seen
    unsubscribe()
