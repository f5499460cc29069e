"""Through Slack end to end: the destroy flow with approval buttons, a real policy and user groups."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.service import Bot
from bot.store.audit import Actor
from handlers.slack.groups import slack_groups
from policies.engine import load_policy
from tests import slacksign
from tests.conftest import audit_rows
from tests.policyrig import FLEET, policy_file, state
from tests.slackfake import Call
from tests.slackrig import TRANSPORTS, SlackRig, start_rig


def approval_rig(make_bot: Callable[..., Bot], tmp_path: Path, transport: str) -> Iterator[SlackRig]:
    def build(client: WebClient) -> Bot:
        policy = load_policy(policy_file(tmp_path), slack_groups(client))  # S… groups via the Web API, like `run`
        store = str(tmp_path / "vmbot.db")
        return make_bot(fleet=FLEET, policy=policy, store=store, slack={"approvals_channel": "C0APPROVE"})

    for rig in start_rig(build, transport):
        rig.fake.usergroups = {"S0ADMINS": ["UADM05", "UADM06"]}
        yield rig


@pytest.fixture(params=TRANSPORTS)
def rig(make_bot: Callable[..., Bot], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SlackRig]:
    yield from approval_rig(make_bot, tmp_path, request.param)


@pytest.fixture
def socket_rig(make_bot: Callable[..., Bot], tmp_path: Path) -> Iterator[SlackRig]:
    yield from approval_rig(make_bot, tmp_path, "socket")


def approval_message(rig: SlackRig, since: int = 0) -> Call:
    return rig.fake.wait_for("chat.postMessage", lambda c: c.args["channel"] == "C0APPROVE", since=since)


def button(call: Call, action_id: str) -> dict:
    actions = next(b for b in call.args["blocks"] if b["type"] == "actions")
    return next(e for e in actions["elements"] if e["action_id"] == action_id)


def click(rig: SlackRig, user: str, action_id: str, value: str) -> dict:
    name = f"c{rig.fake.mark()}"
    rig.click(action_id, value, user=user, name=name, channel="C0APPROVE")
    return rig.fake.wait_for(f"response_url:{name}").args


def test_destroy_needs_a_second_admin(rig: SlackRig) -> None:
    rig.slash('destroy web-01 --reason "disk full, rebuilding"', user="UREQ", name="ask")
    asked = rig.fake.wait_for("response_url:ask")
    assert asked.args["response_type"] == "ephemeral" and "waiting for approval" in asked.args["text"]
    msg = approval_message(rig)
    text = json.dumps(msg.args["blocks"])
    assert "<@UREQ>" in text and "destroy" in text and "kvm01/web-01" in text and "running" in text
    assert "disk full, rebuilding" in text and "unsaved guest data is lost" in text
    approve = button(msg, "approval:approve")
    assert approve["confirm"]["confirm"]["text"] == "Approve" and button(msg, "approval:deny")["style"] == "danger"
    request_id = approve["value"]

    said = click(rig, "UREQ", "approval:approve", request_id)  # the requester never approves
    assert said["response_type"] == "ephemeral" and "someone else must approve it" in said["text"]
    said = click(rig, "UOPS", "approval:approve", request_id)  # an operator is not an approver
    assert "may not approve" in said["text"] or "not allowed" in said["text"], said["text"]
    assert state(rig.bot, "kvm01/web-01") == "running"

    since = rig.fake.mark()
    said = click(rig, "UADM05", "approval:approve", request_id)  # an admin through user group S0ADMINS
    assert "destroyed" in said["text"], said["text"]
    assert state(rig.bot, "kvm01/web-01") == "shut off"
    updated = rig.fake.wait_for("chat.update", lambda c: "done" in c.args["text"], since=since)
    assert (updated.args["channel"], updated.args["ts"]) == ("C0APPROVE", msg.response["ts"])
    assert not any(b["type"] == "actions" for b in updated.args["blocks"])  # no buttons once decided

    late = click(rig, "UADM06", "approval:approve", request_id)
    assert "already" in late["text"] and "UADM05" in late["text"]
    rows = [r for r in audit_rows(rig.bot) if r["action"] == "destroy"]
    assert [(r["slack_user"], r["result"]) for r in rows if r["decision"] != "refused"][-1][1] == "ok"
    kinds = [e["kind"] for e in rig.bot.approvals.events(request_id)]
    assert kinds[0] == "request" and "approve" in kinds and "execute" in kinds


def test_deny_closes_the_request(rig: SlackRig) -> None:
    rig.slash("reset web-02", user="UREQ")
    request_id = button(approval_message(rig), "approval:deny")["value"]
    since = rig.fake.mark()
    said = click(rig, "UADM2", "approval:deny", request_id)
    assert "denied" in said["text"]
    rig.fake.wait_for("chat.update", lambda c: "denied" in c.args["text"], since=since)
    assert state(rig.bot, "kvm01/web-02") == "running"
    assert "denied" in click(rig, "UADM05", "approval:approve", request_id)["text"]


@pytest.mark.parametrize("value", ["nope", "ABC12!", "' OR 1=1 --", "A" * 300])
def test_forged_request_ids_are_refused(rig: SlackRig, value: str) -> None:
    said = click(rig, "UADM05", "approval:approve", value)
    assert "not valid" in said["text"]
    assert audit_rows(rig.bot)[-1]["decision"] == "refused"


def test_a_request_from_another_process_is_posted_by_the_leader(
    rig: SlackRig, make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    """`vmbot exec` on the same store makes a request; the running bot posts its message once."""
    terminal = make_bot(config=rig.bot.config, policy=rig.bot.policy, store=str(tmp_path / "vmbot.db"))
    reply = terminal.handle("destroy web-02", Actor(user="UREQ", unix_user="alice", source="terminal"))
    assert reply.request_id and rig.fake.calls("chat.postMessage") == []
    rig.adapter.approval_messages.catch_up()
    assert button(approval_message(rig), "approval:approve")["value"] == reply.request_id
    rig.adapter.approval_messages.catch_up()
    assert len(rig.fake.calls("chat.postMessage")) == 1  # posted once


def test_an_approval_click_delivered_twice_over_socket_mode_acts_once(socket_rig: SlackRig) -> None:
    rig = socket_rig
    assert rig.socket is not None
    rig.slash("destroy web-01", user="UREQ", name="ask")
    request_id = button(approval_message(rig), "approval:approve")["value"]
    payload = slacksign.block_action_payload(
        "approval:approve", request_id, "UADM05", "C0APPROVE", response_url=rig.fake.response_url("vote")
    )
    envelope_id = rig.socket.send("interactive", payload)
    rig.socket.wait_ack(envelope_id)
    rig.socket.send("interactive", payload, envelope_id=envelope_id)  # Slack's redelivery of the same click
    assert "destroyed" in rig.fake.wait_for("response_url:vote").args["text"]
    rig.adapter.close()  # a barrier: every click that was let through has been handled
    assert rig.socket.acked(envelope_id) == 2
    assert len(rig.fake.calls("response_url:vote")) == 1
    kinds = [e["kind"] for e in rig.bot.approvals.events(request_id)]
    assert kinds.count("approve") == 1 and kinds.count("execute") == 1
    assert state(rig.bot, "kvm01/web-01") == "shut off"


def test_hostile_the_answer_to_approving_a_bulk_destroy_fits_five_posts(make_bot, tmp_path: Path) -> None:
    from tests.conftest import Vm
    from tests.policyrig import make_policy

    fleet = {"kvm01": [Vm(f"vm-{i:03d}-" + "x" * 60) for i in range(400)]}
    bot = make_bot(
        fleet=fleet,
        policy=make_policy(tmp_path),
        store=str(tmp_path / "v.db"),
        slack={"approvals_channel": "C0APPROVE"},
    )
    for rig in start_rig(bot):
        rig.slash("destroy 'vm-*' --yes", user="UREQ", name="ask")
        assert "waiting for approval" in rig.fake.wait_for("response_url:ask").args["text"]
        request_id = button(approval_message(rig), "approval:approve")["value"]
        rig.click("approval:approve", request_id, user="UADM2", name="vote", channel="C0APPROVE")
        rig.fake.wait_for("response_url:vote", timeout=60)
        rig.adapter.close()  # a barrier: every answer owed is sent
        assert state(rig.bot, "kvm01/vm-399-" + "x" * 60) == "shut off"
        assert rig.fake.refused_posts() == {} and rig.fake.posts_per_response_url()["vote"] <= 5
