"""Backups through Slack end to end: backup announced, the catalog ephemeral, restore waits for the buttons."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from bot.service import Bot
from policies.engine import load_policy
from tests.conftest import Vm, Volume
from tests.slackrig import SlackRig, start_rig
from tests.test_slack_approvals import approval_message, button, click

POLICY = """\
roles:
  root: ["*"]
grants:
  - who: [U0ALICE, U0BOB]
    role: root
"""


@pytest.fixture
def rig(make_bot: Callable[..., Bot], tmp_path: Path) -> Iterator[SlackRig]:
    (tmp_path / "policy.yml").write_text(POLICY)
    bot = make_bot(
        fleet={"kvm01": [Vm("<!channel>", "shut off", disks=["/fleet-pool/a.img"]), Vm("web-01")]},
        volumes={"kvm01": [Volume("a.img", 1 << 20)]},
        policy=load_policy(tmp_path / "policy.yml"),
        store=str(tmp_path / "vmbot.db"),
        backups_dir=tmp_path / "backups",
        backup_pools=("default",),
        slack={"approvals_channel": "C0APPROVE"},
    )
    yield from start_rig(bot)


def test_backup_is_announced_the_catalog_is_ephemeral_and_restore_waits_for_approval(rig: SlackRig) -> None:
    call = rig.answer('backup "<!channel>"')
    assert call.method == "chat.postMessage" and "config backup" in call.args["text"]
    assert "<!channel>" not in json.dumps(call.args["blocks"])  # escaped: pings no one
    listed = rig.answer("backups")
    assert listed.args["response_type"] == "ephemeral" and "1 backup(s)" in listed.args["text"]
    conn = rig.bot.pool.call("kvm01", lambda c: c)
    conn.lookupByName("<!channel>").undefine()
    since = rig.fake.mark()
    rig.slash('restore "<!channel>" --reason "lost it"', user="U0ALICE", name="ask")
    asked = rig.fake.wait_for("response_url:ask")
    assert "waiting for approval" in asked.args["text"]
    msg = approval_message(rig, since)
    text = json.dumps(msg.args["blocks"])
    assert "restore" in text and "lost it" in text and "<!channel>" not in text
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("<!channel>")
    answer = click(rig, "U0BOB", "approval:approve", button(msg, "approval:approve")["value"])
    assert "restored" in json.dumps(answer), answer
    assert conn.lookupByName("<!channel>").isPersistent()
    pruned = rig.answer("prune --dry-run")
    assert "nothing to prune" in pruned.args["text"]


def test_h2_the_progress_message_of_a_clone_or_snapshot_escapes_names_in_its_text_fallback(rig: SlackRig) -> None:
    since = rig.fake.mark()
    rig.slash('clone "<!channel>" "<!subteam^S1>"', name="c1")
    rig.fake.wait_call(lambda c: c.method == "chat.update" and "cloned from" in c.args["text"], 10, since)
    rig.slash('snapshot web-01 "<!here>"', name="s1")
    rig.fake.wait_call(lambda c: c.method == "chat.update" and "taken" in c.args["text"], 10, since)
    posted = [c for c in rig.fake.calls()[since:] if c.method in ("chat.postMessage", "chat.update")]
    assert any("clone" in c.args["text"] for c in posted) and any("snapshot" in c.args["text"] for c in posted)
    for call in posted:
        for mention in ("<!channel>", "<!here>", "<!subteam^S1>"):
            assert mention not in call.args["text"], call.args["text"]
