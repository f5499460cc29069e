"""The Slack adapter on a real guest: a screenshot uploaded to the requester, live shutdown progress."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from bot.service import Bot
from tests.hypervisor.conftest import Guest
from tests.slackrig import SlackRig, start_rig


@pytest.fixture
def rig(hv_bot: Bot) -> Iterator[SlackRig]:
    yield from start_rig(hv_bot)


def test_screenshot_is_uploaded_to_the_requester_only(rig: SlackRig, acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    since = rig.fake.mark()

    reply = rig.answer(f"screenshot {acpi_guest.target}", user="U0ALICE", channel="C0OPS")

    assert reply.method.startswith("response_url:") and reply.args["response_type"] == "ephemeral"
    done = rig.fake.wait_for("files.completeUploadExternal", since=since, timeout=10)
    assert done.status == 200
    (shot,) = [f for f in rig.fake.files.values() if f.completed and acpi_guest.name in f.filename]
    assert shot.data is not None and shot.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.filename.endswith(".png")
    opened = rig.fake.calls("conversations.open")[-1]
    assert opened.args["users"] == "U0ALICE"
    assert shot.channel == opened.response["channel"]["id"] and shot.channel != "C0OPS"  # a DM, never the channel
    assert not [c for c in rig.fake.calls("chat.postMessage")[since:] if c.args.get("channel") == "C0OPS"]


def test_shutdown_progress_message_changes_when_the_domain_stops(rig: SlackRig, hv_bot: Bot, acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    since = rig.fake.mark()

    posted = rig.answer(f"shutdown {acpi_guest.target} --timeout 30")

    assert posted.method == "chat.postMessage" and posted.args["channel"] == "C0OPS"
    assert "power off" in str(posted.args["blocks"])  # the progress message, posted before the guest stopped
    update = rig.fake.wait_for("chat.update", lambda c: "shut off after" in c.args["text"], since=since, timeout=30)
    assert update.args["ts"] == posted.response["ts"]  # the same message, changed in place
    ref = hv_bot.fleet.resolve([acpi_guest.target]).refs[0]
    stopped = next(r for r in hv_bot.events.history(ref) if r["event"] == "stopped")
    lag = update.ts - datetime.fromisoformat(stopped["at"]).timestamp()
    assert 0 <= lag < 1.0, f"the message changed {lag:.2f}s after the STOPPED event"
    assert not acpi_guest.dom().isActive()
