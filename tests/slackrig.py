"""The Slack tier's rig: the real Bolt app behind one of Slack's two transports, a bot on
the test driver behind it, and the fake Web API recording what the bot sends.

- ``http``: Bolt served by waitress on 127.0.0.1, requests signed as Slack signs them.
- ``socket``: Bolt's Socket Mode client connected to a local websocket stand-in for
  Slack (``tests/socketfake.py``); envelopes must be acked by id within 3 s.

Scenarios written against ``SlackRig`` (slash, click, home, answer) run over both.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.service import Bot
from handlers.slack.app import SlackAdapter
from handlers.slack.server import serve, slack_wsgi
from handlers.slack.socket_mode import SocketMode
from tests import slacksign
from tests.slackfake import Call, FakeSlack
from tests.socketfake import FakeSocketMode

SECRET = "test-signing-secret"
TRANSPORTS = ("http", "socket")


@dataclass
class SlackRig:
    fake: FakeSlack
    bot: Bot
    adapter: SlackAdapter
    transport: str
    url: str = ""  # http: the endpoint
    socket: FakeSocketMode | None = None  # socket: Slack's side of the websocket

    # -- HTTP only: raw requests, for signature and body checks -------------
    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        assert self.transport == "http", "raw posts are an HTTP matter"
        return slacksign.post(
            self.url, body, headers if headers is not None else slacksign.signed_headers(SECRET, body)
        )

    # -- either transport: deliver, and check Slack's 3-second ack ----------
    def deliver(self, kind: str, payload: dict[str, Any]) -> None:
        """Send what Slack would send; the ack must come (HTTP 200, or the envelope acked)."""
        if self.socket is not None:
            self.socket.wait_ack(self.socket.send(kind, payload))
            return
        if kind == "slash_commands":
            body, ctype = urllib.parse.urlencode(payload).encode(), slacksign.FORM
        elif kind == "interactive":
            body, ctype = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode(), slacksign.FORM
        else:
            body, ctype = json.dumps(payload).encode(), slacksign.JSON
        status, text = self.post(body, slacksign.signed_headers(SECRET, body, content_type=ctype))
        assert status == 200, (status, text)

    def slash(self, text: str, user: str = "U0ALICE", channel: str = "C0OPS", name: str = "r1") -> None:
        fields = slacksign.slash_fields(
            text, user_id=user, channel_id=channel, response_url=self.fake.response_url(name)
        )
        self.deliver("slash_commands", fields)

    def click(self, action_id: str, value: str, user: str = "U0BOB", name: str = "b1", channel: str = "C0OPS") -> None:
        url = self.fake.response_url(name)
        payload = slacksign.block_action_payload(action_id, value, user, channel, response_url=url)
        self.deliver("interactive", payload)

    def home(self, user: str) -> None:
        self.deliver("events_api", slacksign.app_home_opened_event(user))

    def answer(self, text: str, user: str = "U0ALICE", channel: str = "C0OPS") -> Call:
        """Send a slash command and wait for what the bot says back (channel or response_url)."""
        since = self.fake.mark()
        name = f"r{since}"
        self.slash(text, user, channel, name)
        return self.wait_reply(since, name)

    def wait_reply(self, since: int, name: str, timeout: float = 10.0) -> Call:
        replies = (f"response_url:{name}", "chat.postMessage", "chat.update")
        return self.fake.wait_call(lambda c: c.method in replies, timeout, since)


def start_rig(bot: Bot | Callable[[WebClient], Bot], transport: str = "http") -> Iterator[SlackRig]:
    """A running rig; pass a builder to make the bot from the rig's Web API client (user groups, like `vmbot run`)."""
    with ExitStack() as stack:
        fake = stack.enter_context(FakeSlack())
        client = WebClient(token=fake.token, base_url=fake.base_url)
        client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
        if not isinstance(bot, Bot):
            bot = bot(client)
        adapter = SlackAdapter(bot, client, SECRET)
        stack.callback(adapter.close)
        if transport == "socket":
            socket = stack.enter_context(FakeSocketMode())
            fake.socket_url = socket.url
            handler = SocketMode(adapter.app, fake.app_token, acking=adapter.ack_first.acking)
            handler.connect()
            stack.callback(handler.close)
            socket.wait_connections(1)
            yield SlackRig(fake, bot, adapter, transport, socket=socket)
        else:
            server = serve(slack_wsgi(SlackRequestHandler(adapter.app), adapter.metrics, adapter.ack_first.acking), 0)
            stack.callback(server.close)
            yield SlackRig(fake, bot, adapter, transport, url=f"http://127.0.0.1:{server.effective_port}/slack/events")


def sent_texts(fake: FakeSlack) -> list[str]:
    """Every string the bot sent to Slack, as JSON, for escaping checks."""
    return [json.dumps(c.args, ensure_ascii=False) for c in fake.calls() if not c.method.startswith("upload:")]
