"""Reports in Slack: the digest posted by the scheduled job (summary, details in the thread), /vm report
within limits, alerts to the alerts channel, App Home showing the latest digest cut to the viewer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.reports.alerts import Alert
from bot.reports.scope import WHOLE_FLEET
from handlers.slack.report_blocks import alert_message, report_pages
from tests import slacksign
from tests.conftest import Vm
from tests.policyrig import make_policy
from tests.reportrig import big_fleet, bot_on, write_host
from tests.slackrig import SlackRig, sent_texts, start_rig
from tests.test_slack_e2e import assert_within_limits

POLICY = """\
roles:
  viewer: [list, state, report, schedule]
grants:
  - who: [U0ALICE]
    role: viewer
  - who: [U0HALF]
    role: viewer
    hosts: ["kvm00*"]
  - who: [vmbot:scheduler]
    role: viewer
    channels: [C0DIGEST]
"""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SlackRig]:
    bot = bot_on(
        big_fleet(tmp_path, 30, 40), str(tmp_path / "vmbot.db"), make_policy(tmp_path, POLICY), host_timeout=10.0
    )
    bot.config.slack = {"digest_channel": "C0DIGEST", "alerts_channel": "C0ALERTS"}
    try:
        yield from start_rig(bot)
    finally:
        bot.close()


def test_the_scheduled_digest_posts_a_summary_and_details_in_its_thread(rig: SlackRig, tmp_path: Path) -> None:
    rig.bot.desk.publish = rig.adapter.publish_report
    outcome = rig.bot.desk.as_system("digest")("")
    assert outcome.result == "ok", outcome
    posts = rig.fake.calls("chat.postMessage")
    assert posts[0].args["channel"] == "C0DIGEST" and "thread_ts" not in posts[0].args
    assert posts[0].args["blocks"][0]["type"] == "header" and "Fleet status" in posts[0].args["text"]
    assert len(posts) > 1 and all(p.args.get("thread_ts") == posts[0].response["ts"] for p in posts[1:])
    assert "&lt;!channel&gt;" in json.dumps([p.args for p in posts]) and "<!channel>" not in "".join(
        sent_texts(rig.fake)
    )
    assert_within_limits(rig)
    rows = list(rig.bot.audit.db["operations"].rows_where("slack_user = 'vmbot:scheduler'"))  # type: ignore[union-attr]
    assert [(r["action"], r["decision"], r["result"], r["source"]) for r in rows] == [
        ("report", "allowed", "ok", "schedule")
    ]


def test_a_digest_slack_refuses_is_a_failed_run_and_audited(rig: SlackRig) -> None:
    rig.bot.desk.publish = rig.adapter.publish_report
    rig.fake.not_in.add("C0DIGEST")
    outcome = rig.bot.desk.as_system("digest")("")
    assert outcome.result == "failed" and "not_in_channel" in outcome.detail
    rows = list(rig.bot.audit.db["operations"].rows_where("slack_user = 'vmbot:scheduler'"))  # type: ignore[union-attr]
    assert rows[-1]["result"] == "failed"


def test_the_scheduler_identity_needs_its_own_grant(tmp_path: Path) -> None:
    no_grant = POLICY.replace("  - who: [vmbot:scheduler]\n    role: viewer\n    channels: [C0DIGEST]\n", "")
    bot = bot_on(big_fleet(tmp_path, 2, 3), str(tmp_path / "v.db"), make_policy(tmp_path, no_grant))
    bot.config.slack = {"digest_channel": "C0DIGEST"}
    posted: list = []
    bot.desk.publish = lambda channel, report: posted.append(channel)
    try:
        outcome = bot.desk.as_system("digest")("")
        assert outcome.result == "refused" and "no grant names vmbot:scheduler" in outcome.detail and posted == []
        row = list(bot.audit.db["operations"].rows_where("slack_user = 'vmbot:scheduler'"))[-1]  # type: ignore[union-attr]
        assert row["decision"] == "refused"
    finally:
        bot.close()


def test_report_and_schedule_answer_within_limits(rig: SlackRig, tmp_path: Path) -> None:
    call = rig.answer("report status")
    assert call.args["response_type"] == "ephemeral" and "Fleet status" in call.args["text"]
    assert rig.answer("schedule").args["text"]
    half = rig.answer("report status", user="U0HALF")
    assert "kvm010" not in json.dumps(half.args) and "kvm001" in json.dumps(half.args)
    assert_within_limits(rig)


def test_alerts_go_to_the_alerts_channel_escaped(rig: SlackRig) -> None:
    rig.adapter.post_alert("C0ALERTS", Alert("red", "kvm001/<!channel> x crashed"))
    call = rig.fake.calls("chat.postMessage")[-1]
    assert call.args["channel"] == "C0ALERTS" and "&lt;!channel&gt;" in call.args["blocks"][0]["text"]["text"]


def test_app_home_shows_the_latest_digest_cut_to_the_viewer(rig: SlackRig, tmp_path: Path) -> None:
    rig.bot.desk.latest = rig.bot.desk.report("status", WHOLE_FLEET)
    status, _ = rig.post(slacksign.app_home_opened_body("U0HALF"))
    assert status == 200
    view = rig.fake.wait_for("views.publish").args["view"]
    texts = json.dumps(view)
    assert "Latest digest" in texts and "kvm001" in texts and "kvm020/" not in texts
    assert_within_limits(rig)


def test_a_huge_digest_never_makes_a_payload_slack_rejects(tmp_path: Path) -> None:
    bot = bot_on(big_fleet(tmp_path, 55, 100), str(tmp_path / "v.db"))
    try:
        _, rep = bot.desk.report("status", WHOLE_FLEET)
    finally:
        bot.close()
    pages = report_pages(rep)
    assert pages[0]["blocks"][0]["type"] == "header"
    for page in pages:
        assert page["text"] and len(page["blocks"]) <= 50 and len(json.dumps(page["blocks"])) < 12000
        assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in page["blocks"])
    assert "more items" in json.dumps(pages)  # past the cap: counted, not sent


# -- hostile review ------------------------------------------------------------------------


def test_hostile_app_home_shows_nothing_of_the_fleet_to_a_user_with_no_grant(rig: SlackRig) -> None:
    rig.bot.desk.latest = rig.bot.desk.report("status", WHOLE_FLEET)
    status, _ = rig.post(slacksign.app_home_opened_body("U0NOBODY"))
    assert status == 200
    texts = json.dumps(rig.fake.wait_for("views.publish").args["view"])
    assert "0 host(s)" in texts  # the digest part is cut to no grant at all ...
    assert "kvm0" not in texts and "channel" not in texts  # ... but the view lists hosts and paused VMs


def test_hostile_a_report_answer_fits_in_five_response_url_posts(tmp_path: Path) -> None:
    names = [f"{i:03d} " + "&" * 100 for i in range(160)]  # escaping makes each & five characters
    hosts = {"kvm01": write_host(tmp_path / "kvm01.xml", [Vm(n, "paused") for n in names], pool_path="/p1")}
    bot = bot_on(hosts, str(tmp_path / "v.db"), make_policy(tmp_path, POLICY))
    running = start_rig(bot)
    try:
        rig = next(running)
        rig.slash("report status", name="big")
        rig.fake.wait_for("response_url:big")
        rig.adapter.close()  # a barrier: the answer is complete
        assert len(rig.fake.calls("response_url:big")) <= 5 and rig.fake.refused_posts() == {}
        assert len(rig.fake.calls("files.completeUploadExternal")) == 1  # the whole answer, as a file
        (file,) = rig.fake.files.values()
        assert [n for n in names if n not in (file.data or b"").decode()] == []
    finally:
        running.close()
        bot.close()


def test_hostile_a_bidi_override_in_a_name_does_not_reorder_the_line(tmp_path: Path) -> None:
    name = "db-01 \u202edetratser"  # shows as "db-01 restarted…" and turns what follows around
    hosts = {"kvm01": write_host(tmp_path / "kvm01.xml", [Vm(name, "paused")], pool_path="/p1")}
    bot = bot_on(hosts, str(tmp_path / "v.db"))
    try:
        _, rep = bot.desk.report("status", WHOLE_FLEET)
    finally:
        bot.close()
    alert = alert_message(Alert("red", f"kvm01/{name} crashed"))
    for text in [json.dumps(p, ensure_ascii=False) for p in report_pages(rep)] + [alert["blocks"][0]["text"]["text"]]:
        for at in [i for i, ch in enumerate(text) if ch == "\u202e"]:  # closed before the bot's own words
            assert re.match(r"\u202e[^\u202c\u2069\n\"]*[\u202c\u2069]", text[at:]), text[at : at + 60]


def test_hostile_app_home_of_a_100_host_fleet_keeps_every_host_and_what_needs_attention(tmp_path: Path) -> None:
    hosts = {
        f"kvm{h:03d}": write_host(tmp_path / f"kvm{h:03d}.xml", [Vm(f"vm-{h}", "paused" if h == 99 else "running")])
        for h in range(100)
    }
    bot = bot_on(hosts, str(tmp_path / "v.db"), make_policy(tmp_path, POLICY), host_timeout=20.0)
    running = start_rig(bot)
    try:
        rig = next(running)
        rig.bot.desk.latest = rig.bot.desk.report("status", WHOLE_FLEET)
        rig.home("U0ALICE")  # granted everything
        texts = json.dumps(rig.fake.wait_for("views.publish").args["view"])
        assert "Needs attention" in texts, "the paused VM's line was cut"
        assert all(f"kvm{h:03d}" in texts for h in range(100)), [h for h in range(100) if f"kvm{h:03d}" not in texts]
    finally:
        running.close()
        bot.close()
