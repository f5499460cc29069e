"""Slack end to end: signed requests to the real Bolt app over HTTP, a fake Web API behind it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from bot.commands import ACTIONS
from bot.service import Bot
from tests import slackschema, slacksign
from tests.conftest import Vm, audit_rows
from tests.slackfake import Call
from tests.slackrig import SECRET, TRANSPORTS, SlackRig, sent_texts, start_rig


@pytest.fixture(params=TRANSPORTS)
def rig(demo_bot: Bot, request: pytest.FixtureRequest) -> Iterator[SlackRig]:
    """The same scenarios over HTTP and over Socket Mode."""
    yield from start_rig(demo_bot, request.param)


@pytest.fixture
def http_rig(demo_bot: Bot) -> Iterator[SlackRig]:
    """For what only HTTP has: signatures, timestamps and raw bodies."""
    yield from start_rig(demo_bot, "http")


@pytest.fixture(params=TRANSPORTS)
def odd_rig(odd_bot: Bot, request: pytest.FixtureRequest) -> Iterator[SlackRig]:
    yield from start_rig(odd_bot, request.param)


def assert_within_limits(rig: SlackRig) -> None:
    """Everything the bot sent fits Slack's limits and validates against the Block Kit schema."""
    for call in rig.fake.calls():
        blocks = call.args.get("blocks") or (call.args.get("view") or {}).get("blocks")
        if not blocks:
            continue
        assert call.args.get("text") or call.method == "views.publish", f"{call.method} without fallback text"
        assert len(blocks) <= (100 if call.method == "views.publish" else 50)
        assert len(json.dumps(blocks)) < 12000
        for block in blocks:
            assert len(block.get("text", {}).get("text", "")) <= 3000
            for el in block.get("elements", []):
                assert len(el.get("value", "")) <= 2000 and len(el.get("action_id", "")) <= 255
        shown = blocks if call.method != "views.publish" else blocks[:50]
        assert slackschema.blocks_errors(shown) == [], call.method
    assert rig.fake.refused_posts() == {}, "more than 5 posts to one response_url"


READ_COMMANDS = ["help", "help start", "list", "list --all", "state centos7", "info ubuntu20", "ip ubuntu20",
                 "dumpxml centos7", "hosts", "audit", "audit centos7", "report status", "report autostart",
                 "report backups", "schedule", "migrate-check centos7 kvm02",
                 "snapshots centos7", "templates"]  # fmt: skip
COVERED_ELSEWHERE = {"approve", "deny", "freeze", "thaw", "policy"}  # test_slack_approvals.py
COVERED_ELSEWHERE |= {"backup", "restore", "prune"}  # test_slack_backups.py
CHANGES = [
    ("start centos7", "started"),
    ("suspend centos7", "paused"),
    ("resume centos7", "resumed"),
    ("reboot centos7", "reboot requested"),
    ("reset centos7", "reset"),
    ("managedsave centos7", "saved to disk"),
    ("start centos7", "managed-save"),
    ("shutdown centos7 --timeout 5", "shut off after"),
    ("autostart centos7", "autostart enabled"),
    ("autostart centos7 --disable", "autostart disabled"),
    ("snapshot centos7 s1 --description '<!channel> before'", "snapshot s1 taken"),
    ("revert centos7 s1", "reverted to snapshot s1"),
    ("snapshot-delete centos7 s1", "snapshot s1 deleted"),
    ("clone centos7 'centos7 <!here>'", "cloned from centos7"),
    ("template create golden --from centos7", "version 1 of template golden"),
    ("template mark 'centos7 <!here>'", "marked as version 1 of template centos7"),
    ("start centos7", "started"),
    ("destroy centos7", "destroyed"),
    ("undefine centos7", "undefined"),
]


def test_every_read_answers_ephemerally_within_limits(rig: SlackRig, tmp_path) -> None:
    for text in READ_COMMANDS:
        call = rig.answer(text)
        assert call.method.startswith("response_url:"), text
        assert call.args["response_type"] == "ephemeral"
        assert call.args["text"]
    assert_within_limits(rig)


def _final(call: Call) -> bool:
    """The update that turns a progress message into the result ends with how long it took."""
    last = call.args["blocks"][-1]
    return last.get("type") == "context" and last["elements"][0]["text"].startswith("took ")


def test_every_state_change_is_announced_in_the_channel(rig: SlackRig, tmp_path) -> None:
    for text, said in CHANGES:
        since = rig.fake.mark()
        call = rig.answer(text)
        assert call.method == "chat.postMessage", (text, call.method, call.args)
        if "--timeout" in text or text.startswith(("clone", "template create")):  # long work: progress, then result
            call = rig.fake.wait_for("chat.update", _final, since=since)  # progress notes may update it first
            assert call.args["ts"] == rig.fake.calls("chat.postMessage")[-1].response["ts"]
            assert call.args["blocks"][-1]["elements"][0]["text"].startswith("took ")
        assert call.args["channel"] == "C0OPS"
        assert said in call.args["text"], (text, call.args["text"])
        assert call.args["blocks"][0]["text"]["text"].startswith("<@U0ALICE>")
    assert_within_limits(rig)
    untested = {a.name for a in ACTIONS.values() if a.changes_state} - {t.split()[0] for t, _ in CHANGES}
    assert untested <= COVERED_ELSEWHERE, untested


def test_refusal_is_ephemeral_and_changes_nothing(rig: SlackRig) -> None:
    call = rig.answer("resume ubuntu20")
    assert call.args["response_type"] == "ephemeral"
    assert "ubuntu20 is running; resume applies to a paused VM" in call.args["text"]
    assert rig.bot.handle("state ubuntu20", _actor()).headline.endswith("running (unknown)")


def test_public_flag_posts_reads_in_channel(rig: SlackRig) -> None:
    call = rig.answer("list --all --public")
    assert call.method == "chat.postMessage" and call.args["channel"] == "C0OPS"


def test_not_in_channel_falls_back_to_response_url(rig: SlackRig) -> None:
    rig.fake.not_in.add("C0PRIV")
    rig.slash("start centos7", channel="C0PRIV", name="priv")
    call = rig.fake.wait_for("response_url:priv")
    assert rig.fake.calls("chat.postMessage")[0].response["error"] == "not_in_channel"
    assert call.args["response_type"] == "in_channel" and "started" in call.args["text"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Slack-Signature": "v0=" + "0" * 64},
        "stale",
        {},
        "no-signature",
    ],
)
def test_bad_requests_are_refused_and_run_nothing(http_rig: SlackRig, headers) -> None:
    body = slacksign.slash_body("destroy ubuntu20", response_url=http_rig.fake.response_url("x"))
    good = slacksign.signed_headers(SECRET, body)
    if headers == "stale":
        sent = slacksign.signed_headers(SECRET, body, timestamp=int(time.time()) - 6 * 60)
    elif headers == "no-signature":
        sent = {k: v for k, v in good.items() if k != "X-Slack-Signature"}
    elif headers == {}:
        sent = {"Content-Type": slacksign.FORM}
    else:
        sent = {**good, **headers}
    before = len(audit_rows(http_rig.bot))
    status, _ = http_rig.post(body, sent)
    assert status == 401
    assert len(audit_rows(http_rig.bot)) == before
    assert http_rig.fake.calls("chat.postMessage") == []
    assert "running" in http_rig.bot.handle("state ubuntu20", _actor()).headline


@pytest.mark.parametrize("body", [b"payload=%7Bnot-json", b"\xff\xfe garbage", b"payload=" + b"A" * 5000])
def test_malformed_bodies_are_refused(http_rig: SlackRig, body: bytes) -> None:
    before = len(audit_rows(http_rig.bot))
    status, _ = http_rig.post(body)
    assert status in (400, 404)
    assert len(audit_rows(http_rig.bot)) == before


def test_replayed_or_retried_request_runs_once(http_rig: SlackRig) -> None:
    body = slacksign.slash_body("start centos7", response_url=http_rig.fake.response_url("r"))
    headers = slacksign.signed_headers(SECRET, body)
    assert http_rig.post(body, headers)[0] == 200
    assert http_rig.post(body, headers)[0] == 200  # replayed as it was
    retry = slacksign.signed_headers(SECRET, body, timestamp=int(time.time()) + 1)
    assert http_rig.post(body, {**retry, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})[0] == 200
    other = slacksign.slash_body("state centos7", response_url=http_rig.fake.response_url("s"))
    assert http_rig.post(other, slacksign.signed_headers(SECRET, other))[0] == 200  # same second, its own request
    http_rig.adapter.close()  # a barrier: every command that was let through has finished
    actions = [r["action"] for r in audit_rows(http_rig.bot)]
    assert (actions.count("start"), actions.count("state")) == (1, 1), actions


def test_info_buttons_act_by_host_and_uuid(rig: SlackRig) -> None:
    card = rig.answer("info ubuntu20")
    actions = next(b for b in card.args["blocks"] if b["type"] == "actions")
    suspend = next(e for e in actions["elements"] if e["action_id"] == "vm:suspend")
    value = json.loads(suspend["value"])
    assert value["h"] == "kvm01" and len(value["u"]) == 36
    destroy = next(e for e in actions["elements"] if e["action_id"] == "vm:destroy")
    assert destroy["style"] == "danger" and "confirm" in destroy
    since = rig.fake.mark()
    rig.click("vm:suspend", suspend["value"], user="U0BOB")
    said = rig.fake.wait_for("chat.postMessage", since=since)
    assert "paused" in said.args["text"] and said.args["blocks"][0]["text"]["text"].startswith("<@U0BOB>")
    row = audit_rows(rig.bot)[-1]
    assert (row["slack_user"], row["vm_uuid"], row["result"]) == ("U0BOB", value["u"], "ok")


@pytest.mark.parametrize(
    ("action_id", "value"),
    [
        ("vm:suspend", "not json"),
        ("vm:suspend", json.dumps({"a": "suspend", "h": "kvm99", "u": "bc34cab4-6fd8-5bd1-b451-b2f7b1eeb86b"})),
        ("vm:suspend", json.dumps({"a": "undefine", "h": "kvm01", "u": "bc34cab4-6fd8-5bd1-b451-b2f7b1eeb86b"})),
        ("vm:suspend", json.dumps({"a": "suspend", "h": "kvm01", "u": "ubuntu20; rm -rf /"})),
        ("vm:destroy", json.dumps({"a": "suspend", "h": "kvm01", "u": "bc34cab4-6fd8-5bd1-b451-b2f7b1eeb86b"})),
    ],
)
def test_forged_buttons_are_refused_and_audited(rig: SlackRig, action_id: str, value: str) -> None:
    rig.click(action_id, value)
    said = rig.fake.wait_for("response_url:b1")
    assert "not valid" in said.args["text"] and said.args["response_type"] == "ephemeral"
    row = audit_rows(rig.bot)[-1]
    assert (row["decision"], row["slack_user"]) == ("refused", "U0BOB")
    assert "running" in rig.bot.handle("state ubuntu20", _actor()).headline


def test_button_for_a_redefined_vm_is_refused(rig: SlackRig) -> None:
    value = json.dumps({"a": "suspend", "h": "kvm01", "u": "00000000-0000-4000-8000-000000000000"})
    rig.click("vm:suspend", value)
    said = rig.fake.wait_for("response_url:b1")
    assert "no VM with UUID" in said.args["text"]


def test_names_never_ping_anyone(odd_rig: SlackRig, tmp_path) -> None:
    for text in ["list --all", 'info "<!channel>"', 'suspend "<!channel>"', 'state "<!channel>"', "audit", "list"]:
        odd_rig.answer(text)
    odd_rig.answer('start "<!channel>"')  # refused: it is paused now
    for sent in sent_texts(odd_rig.fake):
        assert "<!" not in sent, sent
        assert sent.count("<@") == sent.count("<@U0ALICE>"), sent
    assert any("&lt;!channel&gt;" in s for s in sent_texts(odd_rig.fake))
    assert_within_limits(odd_rig)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_fleet_wide_list_is_a_summary_and_a_file(make_bot, tmp_path, transport: str) -> None:
    """2,000 VMs were 40+ posts to one response_url; Slack keeps 5. Now: one summary, the rest in a file."""
    states = ["running"] * 7 + ["shut off", "paused", "running"]
    fleet = {f"h{h:02d}": [Vm(f"vm-{h:02d}-{i:03d}-{'x' * 20}", states[i % 10]) for i in range(100)] for h in range(20)}
    bot = make_bot(fleet=fleet)
    for rig in start_rig(bot, transport):
        since = rig.fake.mark()
        rig.slash("list --all", name="big")
        summary = rig.fake.wait_for("response_url:big", since=since)
        upload = rig.fake.wait_for("files.completeUploadExternal", since=since, timeout=10)
        rig.adapter.close()  # a barrier: the command has finished, anything more it posts is posted
        assert rig.fake.posts_per_response_url() == {"big": 1}
        text = json.dumps(summary.args["blocks"], ensure_ascii=False)
        assert "2000 VMs on 20 host(s)" in summary.args["text"]
        assert "1600 running" in text and "200 paused" in text and "200 shut off" in text
        assert "h00" in text and "h19" in text  # counts by host
        assert "Needs attention" in text and "200 paused" in text
        assert text.count("vm-") <= 20  # a summary, not the list
        (file,) = rig.fake.files.values()
        assert file.channel == "DU0ALICE" and upload.args["files"][0]["id"] == file.file_id
        body = (file.data or b"").decode()
        assert sum(1 for line in body.splitlines() if "vm-" in line) == 2000
        assert "vm-19-099-" in body
        assert_within_limits(rig)


def test_rate_limited_announcement_is_retried(rig: SlackRig) -> None:
    rig.fake.rate_limit("chat.postMessage", times=1, retry_after=0)
    rig.slash("start centos7")
    ok = rig.fake.wait_for("chat.postMessage", lambda c: c.status == 200)
    assert "started" in ok.args["text"]
    assert [c.status for c in rig.fake.calls("chat.postMessage")] == [429, 200]


def test_app_home_shows_the_fleet(rig: SlackRig, tmp_path) -> None:
    rig.home("U0ALICE")
    view = rig.fake.wait_for("views.publish").args
    assert view["user_id"] == "U0ALICE"
    text = json.dumps(view["view"]["blocks"])
    assert "kvm01" in text and "kvm02" in text and "web-server" in text  # paused: needs attention
    assert_within_limits(rig)


def test_app_home_summarises_a_big_fleet_within_limits(make_bot, tmp_path) -> None:
    """One section per host was cut at 100 blocks, silently dropping hosts; now a summary that holds any size."""
    from bot.config import Config
    from tests.conftest import write_fleet
    from tests.fakehosts import closed_port

    hosts = {
        f"h{h:03d}": write_fleet(tmp_path / f"h{h:03d}.xml", [Vm(f"v{h}-{i}") for i in range(3)]) for h in range(120)
    }
    hosts["gone"] = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    bot = make_bot(Config(hosts=hosts, demo=True, source="tests"), host_timeout=2.0)
    for rig in start_rig(bot, "http"):
        rig.home("U0ALICE")
        blocks = rig.fake.wait_for("views.publish", timeout=20).args["view"]["blocks"]
        text = json.dumps(blocks, ensure_ascii=False)
        assert len(blocks) <= 100
        assert "🟢 360 running" in text and "*By host* (120)" in text
        assert all(f"`h{h:03d}` 3" in text for h in range(120))  # every host, packed into a few sections
        assert "*Hosts down* (1)" in text and "gone: unreachable since" in text
        assert_within_limits(rig)


def _actor():
    from bot.store.audit import Actor

    return Actor(user="U0TEST", source="test")


def test_admin_actions_and_screenshot_through_slack(rig: SlackRig, tmp_path) -> None:
    frozen = rig.answer('freeze kvm01 --reason "maintenance window"')
    assert frozen.method == "chat.postMessage" and "read-only" in frozen.args["text"]  # the team sees it
    refused = rig.answer("start centos7")
    assert refused.args["response_type"] == "ephemeral" and "frozen" in refused.args["text"]
    assert "maintenance window" in refused.args["text"]  # who froze it and why, in every refusal
    assert rig.answer("approvals").args["text"] == "0 request(s) waiting for approval"
    assert "state changes are allowed again" in rig.answer("thaw kvm01").args["text"]
    assert "no approval request 'ZZZZZZ'" in rig.answer("approve ZZZZZZ").args["text"]
    assert "no approval request 'ZZZZZZ'" in rig.answer("deny ZZZZZZ").args["text"]
    assert "no policy file" in rig.answer("policy reload").args["text"]

    since = rig.fake.mark()
    shot = rig.answer("screenshot ubuntu20")
    assert shot.args["response_type"] == "ephemeral"
    done = rig.fake.wait_for("files.completeUploadExternal", since=since)
    (uploaded,) = [f for f in rig.fake.files.values() if f.completed]
    assert uploaded.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert uploaded.channels == ["DU0ALICE"] and done.args["channel_id"] == "DU0ALICE"  # the requester's DM only
    assert not [c for c in rig.fake.calls("chat.postMessage")[1:] if "screenshot" in c.args.get("text", "")]
    assert_within_limits(rig)


def test_work_after_the_ack_that_fails_tells_the_user_its_error_id(rig: SlackRig, caplog) -> None:
    """Defect 14: Slack keeps refusing the announcement (rate limited past every retry): the user gets the id."""
    rig.fake.rate_limit("chat.postMessage", times=50, retry_after=0)
    rig.slash("start centos7", name="fails")
    said = rig.fake.wait_for("response_url:fails", timeout=15)
    m = re.search(r"error ([0-9a-f]{6})", said.args["text"])
    assert m, said.args
    assert f"work after the ack failed [{m.group(1)}]" in caplog.text


# -- hostile review ------------------------------------------------------------------------


def test_hostile_app_home_opens_never_delay_a_slash_commands_ack(rig: SlackRig) -> None:
    rig.fake.rate_limit("views.publish", times=6, retry_after=4)  # Slack says 429: the client waits 4 s, tries again
    try:
        for i in range(6):
            rig.home(f"U0HOME{i:02d}")  # six people open the bot's Home tab
        rig.slash("state centos7", name="starved")  # acked within 3 s (HTTP 200, or the envelope acked)
        assert "shut off" in rig.fake.wait_for("response_url:starved").args["text"]
    finally:
        deadline = time.monotonic() + 20  # let the Home tabs finish before the bot closes
        while len([c for c in rig.fake.calls("views.publish") if c.status == 200]) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)


SCOPED = """\
roles:
  viewer: [list, state]
grants:
  - who: [U0ALICE]
    role: viewer
    hosts: [h00]
    vms: ["vm-00-*"]
"""


def test_hostile_the_full_list_file_holds_only_vms_the_requester_may_list(make_bot, tmp_path) -> None:
    from tests.policyrig import make_policy

    fleet = {f"h{h:02d}": [Vm(f"vm-{h:02d}-{i:03d}") for i in range(100)] for h in range(3)}
    bot = make_bot(fleet=fleet, policy=make_policy(tmp_path, SCOPED))
    for rig in start_rig(bot):
        assert "denied" in rig.answer("state vm-01-000").args["text"]  # the grant does not reach h01
        since = rig.fake.mark()
        rig.slash("list --all", name="big")
        summary = rig.fake.wait_for("response_url:big", since=since)
        rig.fake.wait_for("files.completeUploadExternal", since=since, timeout=10)
        (file,) = rig.fake.files.values()
        body = (file.data or b"").decode()
        assert "vm-00-000" in body
        assert "vm-01-" not in body and "h01" not in body and "h02" not in json.dumps(summary.args)


def test_hostile_a_newline_in_a_name_forges_no_row_in_the_summary_or_the_file(make_bot, tmp_path) -> None:
    forged = "evil\n  🟢 prod-db                  running"
    bot = make_bot(fleet={"h1": [Vm(forged, "paused")] + [Vm(f"vm-{i:03d}") for i in range(130)]})
    for rig in start_rig(bot):
        since = rig.fake.mark()
        rig.slash("list --all", name="big")
        summary = rig.fake.wait_for("response_url:big", since=since)
        rig.fake.wait_for("files.completeUploadExternal", since=since, timeout=10)
        (file,) = rig.fake.files.values()
        lines = (file.data or b"").decode().splitlines()
        lines += "\n".join(b["text"]["text"] for b in summary.args["blocks"] if "text" in b).splitlines()
        assert [line for line in lines if line.lstrip().startswith("🟢 prod-db")] == []
