"""`[limits] open_hosts`: at most that many host connections stay open; the least recently used idle ones
beyond it are closed and opened again on the next call. Never one in use, never one pinned by a change.

Real libvirt test-driver hosts (one fleet file each), nothing mocked: ``opened`` counts real opens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from bot.hypervisor import inventory
from bot.hypervisor.pool import Pool
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, write_fleet

HOSTS = [f"h{i}" for i in range(5)]


def names(conn: libvirt.virConnect) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains())


@pytest.fixture
def uris(tmp_path: Path) -> dict[str, str]:
    return {h: write_fleet(tmp_path / f"{h}.xml", [Vm(f"{h}-a"), Vm(f"{h}-b", "shut off")]) for h in HOSTS}


@pytest.fixture
def make_pool(uris: dict[str, str]) -> Iterator[Callable[[int], Pool]]:
    pools: list[Pool] = []

    def build(cap: int) -> Pool:
        pools.append(Pool(uris, timeout=10.0, open_hosts=cap))
        return pools[-1]

    yield build
    for pool in pools:
        pool.close()


def opened(pool: Pool) -> dict[str, int]:
    return {h: pool.host(h).opened for h in pool.names}


def test_beyond_the_cap_the_least_recently_used_idle_connections_close_and_reopen(make_pool) -> None:
    pool = make_pool(2)
    answers = pool.fan_out(lambda _h, c: names(c))
    assert answers == {h: [f"{h}-a", f"{h}-b"] for h in HOSTS}  # every host answered, none called down
    assert pool.open_count() == 2 and opened(pool) == dict.fromkeys(HOSTS, 1)
    kept = [h for h in HOSTS if pool.host(h).conn is not None]
    closed = [h for h in HOSTS if h not in kept]
    assert pool.call(kept[0], names) == [f"{kept[0]}-a", f"{kept[0]}-b"]
    assert pool.host(kept[0]).opened == 1  # still open: reused
    assert pool.call(closed[0], names) == [f"{closed[0]}-a", f"{closed[0]}-b"]  # reopened, same answer
    assert pool.host(closed[0]).opened == 2 and pool.open_count() == 2
    assert pool.host(kept[0]).conn is not None and pool.host(kept[1]).conn is None  # kept[1] was least recent


def test_a_connection_in_use_is_never_closed_for_the_cap(make_pool) -> None:
    pool = make_pool(1)
    inside, release = threading.Event(), threading.Event()

    def slow(conn: libvirt.virConnect) -> tuple[list[str], bool]:
        inside.set()
        assert release.wait(30)
        return names(conn), bool(conn.isAlive())  # the same connection, still open, after others opened

    answer: list[object] = []
    worker = threading.Thread(target=lambda: answer.append(pool.call("h0", slow)))
    worker.start()
    assert inside.wait(30)
    for h in HOSTS[1:]:
        assert pool.call(h, names) == [f"{h}-a", f"{h}-b"]
    assert pool.host("h0").conn is not None  # in use: passed over, while idle ones were closed
    release.set()
    worker.join(30)
    assert answer == [(["h0-a", "h0-b"], True)]
    assert pool.host("h0").opened == 1 and opened(pool) == dict.fromkeys(HOSTS, 1)
    assert pool.open_count() <= 2  # the cap, plus the one that was in use


def test_a_host_pinned_by_a_state_change_keeps_its_connection(make_pool) -> None:
    """A shutdown's wait for its event and an attached console live on the connection between calls."""
    pool = make_pool(1)
    with pool.change_slot("h0"):
        assert pool.call("h0", names) == ["h0-a", "h0-b"]
        conn = pool.host("h0").conn
        for h in HOSTS[1:]:
            pool.call(h, names)
        assert pool.host("h0").conn is conn and conn is not None and conn.isAlive()
    pool.call("h1", names)  # now idle: the next open beyond the cap may close it
    pool.call("h2", names)
    assert pool.host("h0").conn is None and pool.call("h0", names) == ["h0-a", "h0-b"]
    assert pool.host("h0").opened == 2


def test_the_kept_inventory_covers_hosts_whose_connection_was_closed(
    make_bot: Callable[..., Bot], actor: Actor
) -> None:
    fleet = {h: [Vm(f"{h}-a"), Vm(f"{h}-b", "paused")] for h in HOSTS}
    bot = make_bot(fleet=fleet, open_hosts=2)
    bot.kept.resync()
    assert bot.pool.open_count() == 2
    reply = bot.handle("list --all", actor)  # from the inventory: no host opened again, none called down
    assert reply.status is Status.OK and reply.headline == "10 VMs on 5 host(s)", reply.text()
    assert "did not answer" not in reply.text() and opened(bot.pool) == dict.fromkeys(HOSTS, 1)
    bot.kept.resync()  # the periodic resync opens the closed ones again: still every host, none down
    assert bot.handle("list --all", actor).headline == "10 VMs on 5 host(s)"
    assert sum(opened(bot.pool).values()) > len(HOSTS) and bot.pool.open_count() == 2
    reply = bot.handle("state h3-b", actor)  # a read of a closed host reopens it
    assert reply.status is Status.OK and reply.headline.startswith("h3-b on h3: paused"), reply.text()


def test_a_resync_in_chunks_asks_every_host_once(
    make_bot: Callable[..., Bot], actor: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full resync goes RESYNC_CHUNK hosts at a time (the fresh rows never sit beside the kept ones all at
    once); every host is still asked exactly once and the list is whole."""
    monkeypatch.setattr(inventory, "RESYNC_CHUNK", 2)
    bot = make_bot(fleet={h: [Vm(f"{h}-a"), Vm(f"{h}-b", "shut off")] for h in HOSTS}, open_hosts=2)
    asked: list[str] = []
    bot.pool.observers.append(lambda host, _s: asked.append(host))
    bot.kept.resync()
    assert sorted(asked) == HOSTS
    reply = bot.handle("list --all", actor)
    assert reply.headline == "10 VMs on 5 host(s)" and reply.listing is not None
    assert {h: [r.ref.name for r in rows] for h, rows in reply.listing.hosts.items()} == {
        h: [f"{h}-a", f"{h}-b"] for h in HOSTS
    }
