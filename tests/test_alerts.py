"""Alerts from the pool's real lifecycle events and host reachability (libvirt's test driver):
once per incident, a recovery line, nothing for what was asked through the bot, rate-limited."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import libvirt
import pytest

from bot.config import Config
from bot.reports.alerts import Alert, Alerts
from bot.reports.scope import WHOLE_FLEET
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def bot(make_bot: Callable[..., Bot]) -> Bot:
    return make_bot(fleet={"kvm01": [Vm("web-01"), Vm("web-02"), Vm("<!channel>")]})


def settle(alerts: Alerts) -> None:
    """Let the alert worker drain what the event loop queued."""
    wait_until(alerts.queue.empty)
    time.sleep(0.2)


def test_a_vm_stopped_behind_the_bots_back_alerts_once_then_recovers(bot: Bot) -> None:
    sent: list[Alert] = []
    alerts = bot.desk.alerts(sent.append)
    try:
        bot.pool.call("kvm01", lambda c: c.lookupByName("web-01").destroy())  # as an admin with virsh would
        wait_until(lambda: len(sent) >= 1)
        assert (
            sent[0].level == "amber" and sent[0].text == "kvm01/web-01 destroyed without anyone asking through the bot"
        )
        (ref,) = bot.fleet.resolve(["web-01"]).refs
        alerts.on_event("kvm01", ref.uuid, libvirt.VIR_DOMAIN_EVENT_STOPPED, 1)  # the same incident again
        settle(alerts)
        assert len(sent) == 1
        bot.pool.call("kvm01", lambda c: c.lookupByName("web-01").create())
        wait_until(lambda: len(sent) >= 2)
        assert sent[1] == Alert("green", "recovered: kvm01/web-01 is running again")
        _, digest = bot.desk.report("status", WHOLE_FLEET)
        assert any(
            "web-01 destroyed without anyone asking" in i.text and "recovered" in i.text for i in digest.attention
        )
    finally:
        alerts.close()


def test_what_was_asked_through_the_bot_is_no_alert_but_a_crash_always_is(bot: Bot) -> None:
    sent: list[Alert] = []
    alerts = bot.desk.alerts(sent.append)
    try:
        assert bot.handle("destroy web-02", Actor("U0OPS", "C0OPS")).status.value == "ok"
        (ref,) = bot.fleet.resolve(["<!channel>"]).refs
        alerts.on_event("kvm01", ref.uuid, libvirt.VIR_DOMAIN_EVENT_STOPPED, 2)  # STOPPED_CRASHED, as a killed QEMU
        alerts.on_event("kvm01", ref.uuid, libvirt.VIR_DOMAIN_EVENT_STOPPED, 2)
        settle(alerts)
        assert sent == [Alert("red", "kvm01/<!channel> crashed")]
    finally:
        alerts.close()


def test_alerts_past_the_rate_limit_are_counted_on_the_next_one(bot: Bot) -> None:
    sent: list[Alert] = []
    alerts = bot.desk.alerts(sent.append)
    alerts.per_minute = 2
    try:
        for i in range(5):
            alerts.post(Alert("red", f"a{i}"))
        assert [a.text for a in sent] == ["a0", "a1"]
        alerts.sent = []  # a minute later
        alerts.post(Alert("red", "a5"))
        assert sent[-1].text == "a5 (3 more alert(s) were held back by the rate limit; see the digest)"
    finally:
        alerts.close()


def test_only_the_lease_holder_alerts(bot: Bot) -> None:
    sent: list[Alert] = []
    alerts = bot.desk.alerts(sent.append, active=lambda: False)
    try:
        bot.pool.call("kvm01", lambda c: c.lookupByName("web-01").destroy())
        time.sleep(0.5)
        assert sent == [] and bot.desk.incidents.since(datetime.now(UTC) - timedelta(hours=1)) == []
    finally:
        alerts.close()


def test_a_host_that_stops_answering_and_comes_back_gives_one_alert_and_one_recovery(
    make_bot: Callable[..., Bot],
) -> None:
    config = Config(hosts={"lab": "test:///default"}, demo=True, source="tests")
    bot = make_bot(config, host_timeout=0.3, probe_interval=0.2)
    sent: list[Alert] = []
    alerts = bot.desk.alerts(sent.append)
    try:
        with pytest.raises(Exception, match="no answer within"):
            bot.pool.call("lab", lambda c: time.sleep(1.0))  # a host that hangs past the deadline
        for _ in range(3):  # more calls while it is down: the same incident
            with pytest.raises(Exception, match="unreachable"):
                bot.pool.call("lab", lambda c: c.getLibVersion())
        wait_until(lambda: len(sent) >= 2)
        settle(alerts)
        assert [a.level for a in sent] == ["red", "green"]
        assert sent[0].text.startswith("host lab stopped answering: no answer within 0.3s")
        assert sent[1].text.startswith("recovered: host lab answers again")
        assert "lab" in bot.desk.incidents.returned_hosts()
    finally:
        alerts.close()


def test_alerts_held_back_are_said_when_the_burst_ends_without_another_alert(bot: Bot) -> None:
    sent: list[Alert] = []
    alerts = bot.desk.alerts(sent.append)
    alerts.per_minute, alerts.window = 2, 0.5
    try:
        for i, level in enumerate(["amber", "amber", "amber", "red", "green", "amber", "amber", "amber"]):
            alerts.post(Alert(level, f"a{i}"))
        assert [a.text for a in sent] == ["a0", "a1"]  # the rest are held ...
        wait_until(lambda: len(sent) == 3)  # ... and said in one line once the limit allows, with no new alert
        assert sent[2] == Alert(
            "red", "6 more alert(s) held back by the rate limit: a2; a3; a4; a5; a6; and 1 more (see the digest)"
        )
        time.sleep(0.7)
        assert len(sent) == 3  # said once
    finally:
        alerts.close()
