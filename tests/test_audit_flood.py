"""Defect 1: a glob refused or confirmed over thousands of VMs must not flood the audit store.

A per-target row holds that target's outcome, never the whole list of
targets; free text (the command, reasons, echoed input) is capped. Measured on
a generated test-driver fleet of a few thousand VMs in tmp_path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.reply import Status
from bot.service import Bot
from bot.store.audit import TEXT_CAP, Actor
from tests.conftest import Vm, audit_rows
from tests.policyrig import POLICY, make_policy, who

N = 2000
PER_TARGET = 700  # bytes of store growth per target: the row, its indexes, state history, the request


def store_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in path.parent.glob(path.name + "*"))


@pytest.fixture
def big(make_bot: Callable[..., Bot], tmp_path: Path) -> tuple[Bot, Path]:
    vms = [Vm(f"vm-{i:05d}-{'x' * 20}") for i in range(N)]
    db = tmp_path / "flood.db"
    return make_bot(fleet={"kvm01": vms}, policy=make_policy(tmp_path), store=str(db)), db


def grow(bot: Bot, db: Path, text: str, actor: Actor) -> tuple[int, int, object]:
    bot.audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before, rows = store_bytes(db), len(audit_rows(bot))
    reply = bot.handle(text, actor)
    bot.audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store_bytes(db) - before, len(audit_rows(bot)) - rows, reply


def test_a_policy_refused_glob_adds_a_small_row_per_target(big: tuple[Bot, Path]) -> None:
    bot, db = big
    grown, added, reply = grow(bot, db, "destroy 'vm-*' --yes --reason " + "r" * 5000, who("UOPS"))
    assert reply.status is Status.REFUSED  # type: ignore[attr-defined]
    assert added <= N
    assert grown <= PER_TARGET * N, f"{grown / N:.0f} bytes per target"
    for row in audit_rows(bot)[-added:]:
        for column in ("text", "detail", "reason"):
            assert len(row[column] or "") <= TEXT_CAP, column


def test_a_glob_without_yes_adds_a_small_row_per_target(big: tuple[Bot, Path]) -> None:
    bot, db = big
    grown, _added, reply = grow(bot, db, "suspend 'vm-*'", who("UREQ"))
    assert reply.status is Status.REFUSED and "--yes" in reply.headline  # type: ignore[attr-defined]
    assert len(reply.headline) < 1000  # type: ignore[attr-defined]  # the line does not list 2,000 names either
    assert grown <= PER_TARGET * N, f"{grown / N:.0f} bytes per target"


@pytest.mark.parametrize("verb, status", [("suspend", Status.OK), ("destroy", Status.PENDING)])
def test_a_confirmed_glob_adds_a_small_row_per_target(big: tuple[Bot, Path], verb: str, status: Status) -> None:
    """Run at once (a policy with no target limit), or stored as one approval request over every target."""
    bot, db = big
    if status is Status.OK:
        bot.policy = make_policy(db.parent, POLICY.replace("max_targets_without_approval: 2", "{}"))
    grown, added, reply = grow(bot, db, f"{verb} 'vm-*' --yes --reason " + "r" * 5000, who("UREQ"))
    assert reply.status is status, reply.headline  # type: ignore[attr-defined]
    assert added == N
    assert grown <= PER_TARGET * N, f"{grown / N:.0f} bytes per target"
