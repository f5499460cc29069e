"""Per-VM locks and the scheduler lease across processes: who holds it is said; a dead owner lets go."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.reply import Status
from bot.service import Bot
from bot.store.locks import Locked, Locks
from bot.store.owner import Owner, alive, boot_id, start_time
from tests.policyrig import WEB01, fleet_bot, rows, state, who

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys
from bot.store.audit import Audit
from bot.store.locks import Locks
from bot.store.db import Store
locks = Locks(Store(Audit(sys.argv[1])))
if sys.argv[2] == "lock":
    locks.acquire("kvm01", sys.argv[3], "web-01", "reboot", "U0OTHER")
else:
    assert locks.acquire_lease("scheduler", 60, "other run")
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return fleet_bot(make_bot, tmp_path)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start another process that takes a lock (or the lease) on the same sqlite file and keeps it."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", HOLDER, str(tmp_path / "vmbot.db"), *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        with proc:  # closes its pipes
            proc.kill()
            proc.wait(10)


def test_a_lock_held_by_another_process_refuses_with_who_what_since(bot: Bot, holder) -> None:
    proc = holder("lock", WEB01)
    reply = bot.handle("suspend web-01", who("UREQ"))
    assert reply.status is Status.REFUSED
    assert "kvm01/web-01 is busy: U0OTHER is running reboot on it since" in reply.headline
    assert re.search(rf"since \d\d:\d\d:\d\d UTC \(pid {proc.pid}\)", reply.headline)
    assert state(bot, "web-01") == "running"
    assert rows(bot, "action = 'suspend'")[-1]["result"] == "refused"
    assert bot.handle("suspend web-02", who("UREQ")).status is Status.OK  # other VMs are not locked


def test_a_lock_whose_owner_died_is_released(bot: Bot, holder) -> None:
    proc = holder("lock", WEB01)
    proc.kill()
    proc.wait(10)
    reply = bot.handle("suspend web-01", who("UREQ"))
    assert reply.status is Status.OK and state(bot, "web-01") == "paused"
    assert bot.locks.held() == []


def test_the_lock_is_released_after_success_and_after_refusal(bot: Bot) -> None:
    assert bot.handle("suspend web-01", who("UREQ")).status is Status.OK
    assert bot.handle("suspend web-01", who("UREQ")).status is Status.REFUSED  # already paused: state rules
    assert bot.locks.held() == []


def test_two_holders_in_one_process_exclude_each_other(bot: Bot) -> None:
    with bot.locks.hold("kvm01", WEB01, "web-01", "reboot", "U1"):
        with pytest.raises(Locked, match="U1 is running reboot"):
            bot.locks.acquire("kvm01", WEB01, "web-01", "start", "U2")
        reply = bot.handle("suspend web-01", who("UREQ"))
        assert reply.status is Status.REFUSED and "busy" in reply.headline
    assert bot.handle("suspend web-01", who("UREQ")).status is Status.OK


@pytest.mark.parametrize(
    ("boot", "started"),
    [("a-boot-that-is-over", None), (None, "1")],  # another boot; our pid but another process (pid reused)
)
def test_owners_from_another_boot_or_a_reused_pid_are_dead(bot: Bot, boot: str | None, started: str | None) -> None:
    me = Owner.me()
    bot.store.run(
        "INSERT INTO vm_locks (key, host, uuid, name, action, user, since, pid, boot, started, token)"
        " VALUES (?, 'kvm01', ?, 'web-01', 'reboot', 'UGONE', '2026-01-01T00:00:00', ?, ?, ?, 'old')",
        [f"kvm01/{WEB01}", WEB01, me.pid, boot or me.boot, started or me.started],
    )
    assert not alive(Owner(me.pid, boot or me.boot, started or me.started))
    token = bot.locks.acquire("kvm01", WEB01, "web-01", "start", "UREQ")
    assert bot.locks.holder(f"kvm01/{WEB01}").token == token  # type: ignore[union-attr]


def test_owner_identity() -> None:
    me = Owner.me()
    assert me.boot == boot_id() and me.started == start_time(os.getpid()) and alive(me)
    assert not alive(Owner(2**22 + 12345, me.boot, ""))  # no such pid


def test_only_one_run_holds_the_lease(bot: Bot, holder) -> None:
    proc = holder("lease")
    assert not bot.locks.acquire_lease("scheduler", 60)
    assert not bot.locks.renew_lease("scheduler", 60)
    assert bot.locks.lease_holder("scheduler")["holder"] == "other run"  # type: ignore[index]
    proc.kill()
    proc.wait(10)
    assert bot.locks.acquire_lease("scheduler", 60, "this run")
    assert bot.locks.renew_lease("scheduler", 60)
    second = Locks(bot.store)
    assert second.acquire_lease("scheduler", 60)  # the same process asking again keeps it
    bot.locks.release_lease("scheduler")
    assert bot.locks.lease_holder("scheduler") is None


def test_an_expired_lease_of_a_living_process_can_be_taken(bot: Bot, holder) -> None:
    holder("lease")
    bot.store.run("UPDATE leases SET expires = 0 WHERE name = 'scheduler'")
    assert bot.locks.acquire_lease("scheduler", 60)
