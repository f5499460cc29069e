"""The one Slack message per approval request: posted once, updated on every change.

Where the message lives (channel, ts) is stored next to the request, so after
a restart the bot still updates the same message when a request is approved or
expires. Buttons carry only the request id; the request itself is bound to
hosts and UUIDs inside the bot.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import times
from bot.store.approvals import OPEN, ApprovalRequest, ApprovalStatus
from bot.store.db import Store
from handlers.slack.blocks import context, esc, paginate, section

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Z2-9]{6}\Z")
STATUS_WORDS = {
    ApprovalStatus.PENDING: ":hourglass_flowing_sand: waiting for approval",
    ApprovalStatus.APPROVED: ":white_check_mark: approved; checking again before it runs",
    ApprovalStatus.EXECUTING: ":gear: approved; running",
    ApprovalStatus.DONE: ":white_check_mark: approved and done",
    ApprovalStatus.DENIED: ":no_entry: denied",
    ApprovalStatus.EXPIRED: ":alarm_clock: expired; nothing was done",
    ApprovalStatus.REFUSED: ":no_entry: approved, but refused on the final check; nothing was done",
    ApprovalStatus.INTERRUPTED: ":warning: interrupted when the bot stopped; it will not run again on its own",
}


def approval_blocks(req: ApprovalRequest) -> list[dict]:
    """Who asked, what, on which VMs in which state, why, what will happen, and the buttons."""
    head = f"*{STATUS_WORDS.get(req.status, esc(req.status))}* · request `{req.id}`"
    asked = f"<@{req.requester}> asks to *{esc(req.action)}* ({len(req.targets)} VM{'s' * (len(req.targets) != 1)})"
    targets = [f"• `{esc(t.host)}/{esc(t.name)}` ({esc(t.state)}): {esc(t.preview)}" for t in req.targets]
    blocks = [section(head), section(asked + "\n" + "\n".join(targets))]
    if req.reason:
        blocks.append(section(f"*Reason:* {esc(req.reason)}"))
    votes = ", ".join(f"<@{u}>" for u in req.approvers) or "none yet"
    facts = (
        f"approvals {len(req.approvers)}/{req.needed} ({votes}) · approvers: {esc(req.approvers_role) or 'per policy'}"
    )
    blocks.append(context(facts + f" · expires {times.minute(req.expires_at)}"))
    if req.result:
        blocks.append(section("\n".join(esc(line) for line in req.result.splitlines())))
    if req.decided_by and req.status in (ApprovalStatus.DENIED, ApprovalStatus.REFUSED):
        blocks.append(context(f"by <@{req.decided_by}>"))
    if req.status == OPEN:
        blocks.append({"type": "actions", "block_id": "approval", "elements": _buttons(req)})
    return blocks


def _buttons(req: ApprovalRequest) -> list[dict]:
    what = f"{req.action} on {len(req.targets)} VM(s), asked by {req.requester}"
    confirm = {
        "title": {"type": "plain_text", "text": "Approve this request?"},
        "text": {"type": "plain_text", "text": esc(what)[:300]},
        "confirm": {"type": "plain_text", "text": "Approve"},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    approve = {"type": "button", "action_id": "approval:approve", "value": req.id, "style": "primary"}
    approve |= {"text": {"type": "plain_text", "text": "Approve"}, "confirm": confirm}
    deny = {"type": "button", "action_id": "approval:deny", "value": req.id, "style": "danger"}
    deny["text"] = {"type": "plain_text", "text": "Deny"}
    return [approve, deny]


class ApprovalMessages:
    """Given the store it keeps its table in and how to list pending requests; the caller subscribes ``show``."""

    def __init__(
        self, db: Store, pending: Callable[[], list[ApprovalRequest]], client: WebClient, channel: str | None
    ) -> None:
        self.db, self.pending, self.client, self.channel = db, pending, client, channel  # db: the audit's file
        self.db.create("slack_approval_messages", {"request_id": str, "channel": str, "ts": str}, "request_id")
        self._lock = threading.Lock()  # one post per request, even when two changes race

    def where(self, request_id: str) -> tuple[str, str] | None:
        row = self.db.one("SELECT channel, ts FROM slack_approval_messages WHERE request_id = ?", [request_id])
        return (row[0], row[1]) if row else None

    def show(self, req: ApprovalRequest) -> None:
        """Post the request's message, or update it in place; Slack trouble is logged, never raised."""
        text = f"{req.action} request {req.id}: {req.status}"
        page = paginate(approval_blocks(req), esc(text))[0]
        try:
            with self._lock:
                found = self.where(req.id)
                if found is None:
                    channel = self.channel or req.channel
                    if not channel:
                        return  # a terminal request with nowhere configured to post it
                    ts = self.client.chat_postMessage(channel=channel, **page)["ts"]
                    self.db.run("INSERT OR IGNORE INTO slack_approval_messages VALUES (?, ?, ?)", [req.id, channel, ts])
                    return
            self.client.chat_update(channel=found[0], ts=found[1], **page)
        except SlackApiError as e:
            log.warning("approval message %s not shown: %s", req.id, e.response.get("error"))

    def catch_up(self) -> None:
        """Post requests made elsewhere (``vmbot exec``, another process) that have no message yet."""
        for req in self.pending():
            if self.where(req.id) is None:
                self.show(req)
