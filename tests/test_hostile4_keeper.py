"""The inventory keeper outlives a resync that fails for a reason of the bot's own (the store answered
"database is locked" after its busy timeout, a full disk): before, its thread died silently on the first
one, the kept inventory was never resynced again until a restart, and when it was the first resync every
list waited FIRST_WAIT (120 s) for it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import pytest

from bot.hypervisor import inventory
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm


def test_a_failed_resync_is_tried_again_and_the_keeper_lives_on(
    make_bot: Callable[..., Bot], actor: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inventory, "RETRY_AFTER", 0.1)
    bot = make_bot(fleet={"h1": [Vm("web-01"), Vm("db-01", "shut off")]})
    real, failures = bot.kept.table.replace_host, [sqlite3.OperationalError("database is locked")]

    def locked_once(*args: object, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        real(*args, **kwargs)

    monkeypatch.setattr(bot.kept.table, "replace_host", locked_once)
    bot.kept.keep()
    deadline = time.monotonic() + 10
    while not bot.kept.keeping() and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the keeper's thread
    assert not failures and bot.kept.keeping()
    reply = bot.handle("list --all", actor)
    assert reply.status is Status.OK and reply.headline == "2 VMs on 1 host(s)", reply.text()
    assert "from the inventory kept by the bot" in reply.text()
