"""The Slack adapter: ``/vm``, buttons and App Home on Bolt, over the chat-agnostic bot.

Every listener acks first and works after, so Slack always gets its answer
within 3 s. Payloads are hostile: user and channel come only from the signed
request, and a button's value is parsed and checked before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable

from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.commands import UsageError, parse
from bot.hypervisor.fleet import UUID
from bot.policy import USER_ID
from bot.reads import CARD_ACTIONS
from bot.reply import Attachment, Reply, Status, error_id
from bot.reports.alerts import Alert
from bot.reports.model import Report
from bot.reports.scope import cut_home
from bot.service import Bot
from bot.store.audit import Actor, AuditDecision
from handlers.slack.ackfirst import AckFirst
from handlers.slack.approvals import REQUEST_ID, ApprovalMessages
from handlers.slack.blocks import context, esc
from handlers.slack.home import home_view
from handlers.slack.metrics import Metrics
from handlers.slack.report_blocks import alert_message, report_pages
from handlers.slack.seen import Seen
from handlers.slack.server import SLACK_THREADS as ACK_THREADS
from handlers.slack.summary import fit
from handlers.slack.threads import Prestarted

log = logging.getLogger(__name__)
VM_BUTTON = re.compile(r"^vm:[a-z]{1,20}$")
CANNOT_POST = {"not_in_channel", "channel_not_found", "is_archived", "restricted_action"}


class ReplayGuard:
    """Over HTTP, a signed request seen before runs at most once while its signature holds.

    The key is the body alone: a replay keeps it, and so does Slack's retry of an
    event we were slow to ack (new timestamp and signature, ``X-Slack-Retry-Num``).
    Two genuine requests never share a body: each carries its own trigger id or
    event id. Socket Mode requests have no body here; they are deduplicated by
    envelope id in ``handlers.slack.socket_mode``.
    """

    def __init__(self, window: float = 600.0) -> None:
        # Bolt accepts a timestamp up to 300 s either side of our clock: one whose timestamp is ahead of our
        # clock stays acceptable for up to 600 s after it arrived, so the body is remembered that long.
        self.seen = Seen(window)

    def __call__(self, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        if req.mode != "http":
            return next()
        if not self.seen.first([hashlib.sha256(req.raw_body.encode()).hexdigest()]):
            retry = (req.headers.get("x-slack-retry-num") or [""])[0]
            log.warning("%s Slack request dropped", "retried" if retry else "replayed")
            return BoltResponse(status=200, body="")
        return next()


class Progress:
    """One channel message for long work, updated in place as it goes (at most once a second)."""

    def __init__(self, client: WebClient, channel: str, user: str, title: str) -> None:
        self.client, self.channel, self.user, self.title = client, channel, user, title
        self.token = secrets.token_urlsafe(12)  # what the Cancel button carries; never a VM name
        self.cancelled = threading.Event()  # bot.lifecycle stops waiting when this is set
        self.ts: str | None = None
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, note: str) -> None:
        if self.ts and time.monotonic() - self._last < 1.0:
            return
        text = f":hourglass_flowing_sand: <@{self.user}>: {esc(self.title)}"
        cancel = {"type": "button", "text": {"type": "plain_text", "text": "Cancel"}, "action_id": "progress:cancel"}
        cancel["value"] = self.token
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            context(esc(note)),
            {"type": "actions", "block_id": "progress", "elements": [cancel]},
        ]
        try:
            if self.ts is None:
                self.ts = self.client.chat_postMessage(channel=self.channel, text=esc(self.title), blocks=blocks)["ts"]
            else:
                self.client.chat_update(channel=self.channel, ts=self.ts, text=esc(self.title), blocks=blocks)
            self._last = time.monotonic()
        except SlackApiError as e:
            log.warning("progress update failed: %s", e.response.get("error"))

    def finish(self, message: dict) -> bool:
        """Turn the progress message into the result; False if there was none to update."""
        if self.ts is None:
            return False
        took = context(f"took {time.monotonic() - self.started:.1f}s")
        self.client.chat_update(
            channel=self.channel, ts=self.ts, text=message["text"], blocks=[*message["blocks"], took]
        )
        return True


class SlackAdapter:
    def __init__(self, bot: Bot, client: WebClient, signing_secret: str, metrics: Metrics | None = None) -> None:
        self.bot = bot
        self.metrics = metrics or Metrics(bot.pool, bot.desk.runs)
        # Bolt acks from its listener pool (5 threads by default): at 20 commands in flight acks queued behind
        # each other. One thread per request waitress may hand over keeps an ack from waiting for a thread,
        # and all of them started now keeps an ack from waiting for threads being started (handlers.slack.threads).
        self.listeners = Prestarted(ACK_THREADS, "vmbot-ack")
        self.app = App(
            client=client,
            signing_secret=signing_secret,
            token_verification_enabled=True,
            listener_executor=self.listeners,
        )
        # Long work runs here, not in Bolt's listener pool, so a few slow shutdowns never delay an ack.
        self.work = Prestarted(32, "vmbot-work")
        self.ack_first = AckFirst()  # and it waits to start while other requests are being acked
        self.app.use(ReplayGuard())
        self.app.command("/vm")(self.on_command)
        self.app.action({"action_id": VM_BUTTON})(self.on_button)
        self.app.action("progress:cancel")(self.on_cancel)
        self.app.action({"action_id": re.compile(r"^approval:(approve|deny)$")})(self.on_approval)
        channel = bot.config.slack.get("approvals_channel")
        self.approval_messages = ApprovalMessages(bot.store, bot.pending_requests, client, channel)
        bot.on_request_change.append(self.approval_messages.show)
        self._running: dict[str, Progress] = {}
        self.app.event("app_home_opened")(self.on_home)

    # -- listeners: ack first, then work ---------------------------------

    def on_command(self, ack: Callable, command: dict, client: WebClient, respond: Callable) -> None:
        ack()
        actor = slack_actor(command.get("user_id"), command.get("channel_id"))
        text = command.get("text", "")
        if actor is None or not isinstance(text, str):
            log.warning("malformed slash command dropped: no valid user or text")
            return
        self.later(text, actor, client, respond)

    def on_button(self, ack: Callable, body: dict, action: dict, client: WebClient, respond: Callable) -> None:
        ack()
        actor = interaction_actor(body)
        if actor is None:
            log.warning("malformed button payload dropped: no valid user")
            return
        text = self.button_command(action)
        if text is None:
            eid = error_id()
            log.warning("malformed button payload [%s]", eid)
            self.bot.audit.record(
                actor, eid, "(button)", "button", AuditDecision.REFUSED, "usage", "malformed button", error_id=eid
            )
            respond(
                response_type="ephemeral",
                replace_original=False,
                text=f"That button is not valid; nothing was done (error {eid})",
            )
            return
        self.later(text, actor, client, respond)

    def on_cancel(self, ack: Callable, body: dict, action: dict, respond: Callable) -> None:
        """Stop waiting on long work; only the person who started it may, and nothing is forced."""
        ack()
        task = self._running.get(str(action.get("value", "")))
        if task is None:
            respond(response_type="ephemeral", replace_original=False, text="That work has already finished.")
        elif (actor := interaction_actor(body)) is None or actor.user != task.user:
            respond(response_type="ephemeral", replace_original=False, text=f"Only <@{task.user}> can cancel this.")
        else:
            task.cancelled.set()
            respond(response_type="ephemeral", replace_original=False, text="Cancelling: vmbot stops waiting.")

    def on_approval(self, ack: Callable, body: dict, action: dict, respond: Callable, client: WebClient) -> None:
        """Approve or Deny: the click is the clicker's vote, checked by the policy like a typed one."""
        ack()
        actor = interaction_actor(body)
        if actor is None:
            log.warning("malformed approval click dropped: no valid user")
            return
        request_id = str(action.get("value", ""))
        if not REQUEST_ID.match(request_id):
            eid = error_id()
            self.bot.audit.record(
                actor, eid, "(button)", "approve", AuditDecision.REFUSED, "usage", "malformed request id"
            )
            respond(response_type="ephemeral", replace_original=False, text=f"That button is not valid (error {eid})")
            return
        approve = action["action_id"] == "approval:approve"
        self.submit(self._vote, approve, request_id, actor, respond, client, respond=respond)

    def _vote(self, approve: bool, request_id: str, actor: Actor, respond: Callable, client: WebClient) -> None:
        """The voter's answer goes the way every answer does (fit): at most 5 posts, the rest as a file."""
        reply = self.bot.approve(request_id, actor) if approve else self.bot.deny(request_id, actor)
        self.metrics.commands.labels("approve" if approve else "deny", reply.status.value).inc()
        pages, file = fit(reply)
        for page in pages:
            respond(response_type="ephemeral", replace_original=False, **page)
        if file is not None:
            self._upload(client, actor, file)

    def close(self) -> None:
        """Let work already acked finish (its replies are owed), then stop; no thread is left behind.

        Listeners first: one acks and then submits its work, so the work pool closes only after the last
        listener has handed its work over (closed first, it refused work already acked)."""
        self.listeners.shutdown(wait=True)
        self.work.shutdown(wait=True)

    def on_home(self, event: dict, client: WebClient) -> None:
        """Bolt's listener threads are few and also ack /vm: the Home tab is built on our own pool."""
        user = event.get("user")
        if not (isinstance(user, str) and USER_ID.match(user)):
            log.warning("app_home_opened without a valid user dropped")
            return
        self.submit(self.publish_home, user, client)

    def publish_home(self, user: str, client: WebClient) -> None:
        bot = self.bot
        snap = bot.kept.snapshot()
        inv, note = (snap.inventory, snap.note()) if snap else (bot.fleet.inventory(), "")
        seen = cut_home(bot.desk.viewer(user), bot.pool.names, inv, bot.freezes.active(), bot.pending_requests())
        view = home_view(seen.hosts, seen.inventory, seen.freezes, seen.pending, bot.desk.home(user), note)
        client.views_publish(user_id=user, view=view)

    # -- scheduled posts and alerts -----------------------------------------

    def publish_report(self, channel: str, report: Report) -> None:
        """The digest: the summary in the channel, details in its thread; raises if Slack refused it."""
        pages = report_pages(report)
        ts = self.app.client.chat_postMessage(channel=channel, **pages[0])["ts"]
        for page in pages[1:]:
            self.app.client.chat_postMessage(channel=channel, thread_ts=ts, **page)

    def post_alert(self, channel: str, alert: Alert) -> None:
        self.app.client.chat_postMessage(channel=channel, **alert_message(alert))

    # -- the one path from text to Slack ----------------------------------

    def button_command(self, action: dict) -> str | None:
        """Rebuild the command a button stands for, or None if its payload is not one we made."""
        try:
            value = json.loads(action.get("value") or "")
            verb, host, uuid = value["a"], value["h"], value["u"]
        except (ValueError, TypeError, KeyError):
            return None
        ok = (
            isinstance(verb, str) and verb in CARD_ACTIONS and action.get("action_id") == f"vm:{verb}"
            and isinstance(host, str) and host in self.bot.pool.names
            and isinstance(uuid, str) and UUID.match(uuid)
        )  # fmt: skip
        return f"{verb} {shlex.quote(f'{host}/{uuid}')}" if ok else None

    def later(self, text: str, actor: Actor, client: WebClient, respond: Callable) -> None:
        """Run a command after the ack, on our own pool."""
        self.submit(self.run, text, actor, client, respond, respond=respond)

    def submit(self, fn: Callable, *args: object, respond: Callable | None = None) -> None:
        """Work after the ack; a failure is logged with an id, and the requester is told that id."""

        def work() -> None:
            self.ack_first.wait_turn()
            try:
                fn(*args)
            except Exception:
                eid = error_id()
                log.exception("work after the ack failed [%s]", eid)
                if respond is not None:
                    self._tell_failure(respond, eid)

        self.work.submit(work)

    @staticmethod
    def _tell_failure(respond: Callable, eid: str) -> None:
        text = f":warning: something went wrong after your command was received (error {eid}); see the audit"
        try:
            respond(response_type="ephemeral", replace_original=False, text=text)
        except Exception:
            log.warning("could not tell the requester about error %s", eid)

    def run(self, text: str, actor: Actor, client: WebClient, respond: Callable) -> None:
        action, public, title = _intent(text)
        progress = Progress(client, actor.channel, actor.user, title) if actor.channel else None
        if progress:
            self._running[progress.token] = progress
        try:
            reply = self.bot.handle(text, actor, progress)
        finally:
            if progress:
                self._running.pop(progress.token, None)
        self.metrics.commands.labels(action, reply.status.value).inc()
        self.deliver(reply, actor, client, respond, public, progress)

    def deliver(
        self, reply: Reply, actor: Actor, client: WebClient, respond: Callable, public: bool, progress: Progress | None
    ) -> None:
        """State changes are announced in the channel; reads stay with the requester unless --public."""
        started = progress is not None and progress.ts is not None  # the channel already saw this work
        announce = started or reply.changed or (public and reply.status is Status.OK)
        pages, file = fit(reply, who=actor.user if announce else None)
        if announce and progress and progress.finish(pages[0]):
            pages = pages[1:]
        for page in pages:
            if not (announce and self._post(client, actor.channel, page)):
                respond(response_type="in_channel" if announce else "ephemeral", replace_original=False, **page)
        for attachment in (reply.attachment, file):
            if attachment is not None:
                self._upload(client, actor, attachment)

    def _post(self, client: WebClient, channel: str, page: dict) -> bool:
        try:
            client.chat_postMessage(channel=channel, **page)
            return True
        except SlackApiError as e:
            if e.response.get("error") in CANNOT_POST:
                return False  # fall back to response_url
            raise

    def _upload(self, client: WebClient, actor: Actor, att: Attachment) -> None:
        """Slack has no ephemeral files, so a screenshot or a long answer goes to the requester's DM."""
        dm = client.conversations_open(users=actor.user)["channel"]["id"]
        client.files_upload_v2(channel=dm, content=att.content, filename=att.filename, title=att.title or att.filename)


def slack_actor(user: object, channel: object) -> Actor | None:
    """The actor of a Slack payload, or None when its user is not a Slack user ID."""
    if not (isinstance(user, str) and USER_ID.match(user)):
        return None
    return Actor(user=user, channel=channel if isinstance(channel, str) else "", source="slack")


def interaction_actor(body: dict) -> Actor | None:
    user, channel = body.get("user"), body.get("channel")
    return slack_actor(
        user.get("id") if isinstance(user, dict) else None, channel.get("id") if isinstance(channel, dict) else None
    )


def _intent(text: str) -> tuple[str, bool, str]:
    """The action (a metrics label), --public, and a title for a progress message."""
    try:
        cmd = parse(text)
    except UsageError:
        return "invalid", False, "/vm"
    return cmd.action.name, bool(cmd.flag("public")), f"{cmd.action.name} {' '.join(cmd.targets)}".strip()
