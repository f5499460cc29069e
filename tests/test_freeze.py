"""Freeze and thaw: admin-only, audited, stored, and said in every refused reply."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.reply import Status
from bot.service import Bot
from tests.policyrig import fleet_bot, rows, state, who


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return fleet_bot(make_bot, tmp_path)


def test_only_a_role_with_freeze_may_freeze(bot: Bot) -> None:
    refused = bot.handle("freeze", who("UOPS"))
    assert refused.status is Status.REFUSED and "operator does not include freeze" in refused.headline
    scoped = bot.handle("freeze kvm02", who("UWEB"))  # admin, but only of kvm01/web-*
    assert scoped.status is Status.REFUSED and "host kvm02" in scoped.headline
    assert bot.freezes.active() == []
    assert [r["decision"] for r in rows(bot, "action = 'freeze'")] == ["refused", "refused"]


def test_fleet_freeze_refuses_every_change_and_says_who_and_since(bot: Bot) -> None:
    done = bot.handle("freeze --reason 'kernel upgrade'", who("UADM2"))
    assert done.status is Status.OK and re.search(r"frozen by UADM2 since \d{4}-\d\d-\d\d \d\d:\d\d UTC", done.headline)
    reply = bot.handle("start db-01", who("UREQ"))
    assert reply.status is Status.REFUSED and reply.status.exit_code == 1
    assert "the whole fleet is read-only, frozen by UADM2 since" in reply.headline
    assert "(kernel upgrade)" in reply.headline and state(bot, "db-01") == "shut off"
    assert bot.handle("destroy web-01", who("UREQ")).status is Status.REFUSED  # no approval request either
    assert bot.pending_requests() == []
    assert bot.handle("state web-01", who("UOPS")).status is Status.OK  # reading still works
    denied = bot.handle("start db-01", who("UNOBODY"))  # any refusal shows the freeze
    assert any("frozen by UADM2" in line for line in denied.lines)
    dry = bot.handle("start db-01 --dry-run", who("UREQ"))
    assert dry.status is Status.OK and "would be refused: frozen" in dry.text()
    assert bot.handle("thaw", who("UADM2")).status is Status.OK
    assert bot.handle("start db-01", who("UREQ")).status is Status.OK and state(bot, "db-01") == "running"
    audit = rows(bot, "action in ('freeze', 'thaw')")
    assert [(r["action"], r["slack_user"], r["result"]) for r in audit] == [
        ("freeze", "UADM2", "ok"),
        ("thaw", "UADM2", "ok"),
    ]


def test_host_freeze_leaves_the_other_hosts_alone(bot: Bot) -> None:
    assert bot.handle("freeze kvm01", who("UADM2")).status is Status.OK
    assert "host kvm01 is read-only" in bot.handle("suspend web-01", who("UREQ")).headline
    assert bot.handle("suspend app-01", who("UREQ")).status is Status.OK
    both = bot.handle("resume app-02 web-02", who("UREQ"))
    assert both.status is Status.REFUSED and "kvm01" in both.headline and state(bot, "app-02") == "paused"
    again = bot.handle("freeze kvm01", who("UREQ"))
    assert again.status is Status.OK and again.headline.startswith("already frozen") and "by UADM2" in again.headline


def test_thawing_a_host_does_not_lift_the_fleet_freeze(bot: Bot) -> None:
    bot.handle("freeze", who("UADM2"))
    bot.handle("freeze kvm01", who("UADM2"))
    one = bot.handle("thaw kvm01", who("UADM2"))
    assert "thawed host kvm01" in one.headline and any("whole fleet" in line for line in one.lines)
    assert bot.handle("start db-01", who("UREQ")).status is Status.REFUSED
    assert bot.handle("thaw", who("UADM2")).status is Status.OK and bot.freezes.active() == []
    assert bot.handle("thaw", who("UADM2")).headline == "nothing was frozen"


def test_unknown_host_is_a_usage_error(bot: Bot) -> None:
    reply = bot.handle("freeze kvm09", who("UADM2"))
    assert reply.status is Status.USAGE and "no host named 'kvm09'" in reply.headline


def test_a_freeze_is_stored_so_another_process_obeys_it(make_bot: Callable[..., Bot], bot: Bot, tmp_path: Path) -> None:
    bot.handle("freeze", who("UADM2"))
    other = fleet_bot(make_bot, tmp_path)  # e.g. `vmbot exec` on the same store
    assert "frozen by UADM2" in other.handle("start db-01", who("UREQ")).headline


def test_a_freeze_after_the_request_stops_the_approved_run(bot: Bot) -> None:
    asked = bot.handle("destroy web-01", who("UREQ"))
    assert asked.status is Status.PENDING and asked.request_id
    bot.handle("freeze kvm01", who("UADM2"))
    reply = bot.approve(asked.request_id, who("UADM2"))
    assert reply.status is Status.REFUSED and "frozen by UADM2" in reply.headline
    assert state(bot, "web-01") == "running"
