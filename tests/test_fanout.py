"""Fan-out at fleet scale: 200 test-driver hosts and a silent one, a host timeout tighter than the queue.

Opening 200 fleet files at once takes the bot far longer than the timeout; a host
must be judged by its own attempt (from the moment it starts), never by the time it
spent waiting behind the others. The silent host is a real TCP listener
(tests/fakehosts.py) that never answers libvirt's handshake.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bot.config import Config
from bot.hypervisor.pool import HostDown
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, write_fleet
from tests.fakehosts import silent_listener

HOSTS, PER_HOST = 200, 10
TIMEOUT = 0.6  # a test-driver open takes a few ms; 200 of them in a queue take far longer


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """200 hosts x 10 VMs as test:///abs/path.xml files, written once for the module."""
    d = tmp_path_factory.mktemp("fleet200")
    states = ["running"] * 7 + ["shut off", "paused", "running"]
    return {
        f"h{h:03d}": write_fleet(d / f"h{h:03d}.xml", [Vm(f"vm-{h:03d}-{i:02d}", states[i]) for i in range(PER_HOST)])
        for h in range(HOSTS)
    }


@pytest.fixture
def silent_uri() -> Iterator[str]:
    listener, held = silent_listener()
    yield f"qemu+tcp://127.0.0.1:{listener.getsockname()[1]}/system"
    listener.close()
    for conn in held:
        conn.close()


@pytest.fixture
def big_bot(make_bot: Callable[..., Bot], fleet_dir: dict[str, str], silent_uri: str) -> Bot:
    config = Config(hosts={**fleet_dir, "silent": silent_uri}, demo=True, source="tests")
    return make_bot(config, host_timeout=TIMEOUT, probe_interval=600.0)


def test_no_healthy_host_is_called_down_and_the_silent_one_is_named(big_bot: Bot, actor: Actor) -> None:
    started = time.monotonic()
    reply = big_bot.handle("list --all", actor)
    took = time.monotonic() - started
    assert reply.status is Status.OK
    assert reply.listing is not None
    assert list(reply.listing.down) == ["silent"], sorted(reply.listing.down)[:10]
    assert "no answer within 0.6s" in reply.listing.down["silent"]
    assert sum(len(rows) for rows in reply.listing.hosts.values()) == HOSTS * PER_HOST
    assert [big_bot.pool.status(h) for h in big_bot.pool.names if h != "silent"] == [None] * HOSTS
    assert took < 60  # a sanity bound, not a benchmark (bench/thousand_hosts.py measures)


def test_a_second_fan_out_reuses_every_connection(big_bot: Bot, actor: Actor) -> None:
    big_bot.handle("list", actor)
    again = big_bot.handle("list --all", actor)
    assert again.listing is not None and list(again.listing.down) == ["silent"]
    assert {big_bot.pool.host(h).opened for h in big_bot.pool.names if h != "silent"} == {1}


def test_threads_are_made_on_demand_and_end_when_idle(big_bot: Bot, actor: Actor) -> None:
    """Four idle threads per host would be 800 here (4,000 for a thousand hosts) for the bot's whole life."""
    before = threading.active_count()
    big_bot.handle("list --all", actor)
    deadline = time.monotonic() + 15
    while threading.active_count() > before + 10 and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a real condition: idle worker threads ending
    assert threading.active_count() <= before + 10


def test_a_call_queued_behind_others_is_timed_from_its_own_start(big_bot: Bot) -> None:
    """Direct calls on every host at once: each gets its full timeout once it actually runs."""
    answers = big_bot.pool.fan_out(lambda _h, c: len(c.listAllDomains()))
    bad = {h: str(a) for h, a in answers.items() if isinstance(a, Exception) and h != "silent"}
    assert bad == {}
    assert isinstance(answers["silent"], HostDown)
    assert set(answers.values()) - {answers["silent"]} == {PER_HOST}
