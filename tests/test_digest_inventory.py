"""The digest (`report status`, the scheduled digest, App Home's copy of it) reads the VMs from the inventory
the bot keeps; the hosts are asked only what it does not hold (versions, memory, pools). Without a kept
inventory, or with a stale one, every host is asked its VMs too, and the report says why.

Real test-driver hosts; every libvirt call is counted through the pool's observers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import Config
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, write_fleet

HOSTS = {
    "h1": [Vm("web-01"), Vm("db-01", "paused")],
    "h2": [Vm("app-01"), Vm("off-01", "shut off")],
    "h3": [Vm("batch-01", "shut off")],
}


@pytest.fixture
def build(make_bot: Callable[..., Bot], tmp_path: Path) -> Callable[[str], Bot]:
    """Bots on one real config (not the demo), each on the named store file."""
    hosts = {h: write_fleet(tmp_path / f"{h}.xml", vms) for h, vms in HOSTS.items()}
    return lambda store: make_bot(Config(hosts=dict(hosts), source="tests"), store=str(tmp_path / store))


def status(bot: Bot, actor: Actor) -> tuple[list[str], Counter[str]]:
    """The digest's summary lines, and how many libvirt calls each host got while it was built."""
    calls: Counter[str] = Counter()
    bot.pool.observers.append(lambda host, _s: calls.update([host]))
    reply = bot.handle("report status", actor)
    bot.pool.observers.clear()
    assert reply.status is Status.OK and reply.report is not None, reply.text()
    return reply.report.summary, calls


def test_the_digest_reads_vms_from_the_kept_inventory(build: Callable[[str], Bot], actor: Actor) -> None:
    keeper = build("shared.db")
    keeper.kept.resync()  # what `vmbot run` does at start and every 5 minutes
    summary, calls = status(keeper, actor)
    assert summary[0] == "3 host(s), 3 answering; 5 VM(s): 1 paused, 2 running, 2 shut off", summary
    assert summary[1].startswith("(VMs from the inventory kept by the bot (resynced "), summary
    assert calls == Counter({"h1": 1, "h2": 1, "h3": 1})  # host facts only: no domain list asked again
    keeper.vms.beat(time.time())
    nextdoor = build("shared.db")  # `vmbot exec -- report status` next to the running bot
    summary, calls = status(nextdoor, actor)
    assert summary[0].endswith("5 VM(s): 1 paused, 2 running, 2 shut off") and "kept by the bot" in summary[1]
    assert calls == Counter({"h1": 1, "h2": 1, "h3": 1})


def test_without_a_kept_inventory_the_digest_asks_every_host_and_says_so(
    build: Callable[[str], Bot], actor: Actor
) -> None:
    summary, calls = status(build("alone.db"), actor)
    assert summary == [
        "3 host(s), 3 answering; 5 VM(s): 1 paused, 2 running, 2 shut off",
        "(no inventory is kept (vmbot run keeps one): asked every host)",
    ]
    assert calls == Counter({"h1": 2, "h2": 2, "h3": 2})  # host facts, then its VMs


def test_a_stale_inventory_is_not_trusted_by_the_digest(build: Callable[[str], Bot], actor: Actor) -> None:
    keeper = build("shared.db")
    keeper.kept.resync()
    keeper.vms.beat(time.time() - 3600)  # nobody has kept it for an hour (the keeping bot died)
    summary, calls = status(build("shared.db"), actor)
    assert summary[1].startswith("(the inventory is stale (last kept ") and "asked every host" in summary[1]
    assert calls == Counter({"h1": 2, "h2": 2, "h3": 2})
    assert summary[0].endswith("5 VM(s): 1 paused, 2 running, 2 shut off")
