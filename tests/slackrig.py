"""The Slack tier's rig: the real Bolt app served by waitress on 127.0.0.1, a bot on
the test driver behind it, and the fake Web API recording what the bot sends."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.service import Bot
from handlers.slack.app import SlackAdapter
from handlers.slack.server import serve, slack_wsgi
from tests import slacksign
from tests.slackfake import Call, FakeSlack

SECRET = "test-signing-secret"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@dataclass
class SlackRig:
    fake: FakeSlack
    bot: Bot
    adapter: SlackAdapter
    url: str

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return slacksign.post(
            self.url, body, headers if headers is not None else slacksign.signed_headers(SECRET, body)
        )

    def slash(self, text: str, user: str = "U0ALICE", channel: str = "C0OPS", name: str = "r1") -> tuple[int, str]:
        return self.post(
            slacksign.slash_body(text, user_id=user, channel_id=channel, response_url=self.fake.response_url(name))
        )

    def answer(self, text: str, user: str = "U0ALICE", channel: str = "C0OPS") -> Call:
        """Send a slash command and wait for what the bot says back (channel or response_url)."""
        since = self.fake.mark()
        name = f"r{since}"
        status, _ = self.slash(text, user, channel, name)
        assert status == 200
        return self.wait_reply(since, name)

    def wait_reply(self, since: int, name: str, timeout: float = 10.0) -> Call:
        replies = (f"response_url:{name}", "chat.postMessage", "chat.update")
        return self.fake.wait_call(lambda c: c.method in replies, timeout, since)

    def click(self, action_id: str, value: str, user: str = "U0BOB", name: str = "b1") -> tuple[int, str]:
        body = slacksign.block_action_body(action_id, value, user_id=user, response_url=self.fake.response_url(name))
        return self.post(body)


def start_rig(bot: Bot | Callable[[WebClient], Bot]) -> Iterator[SlackRig]:
    """A running rig; pass a builder to make the bot from the rig's Web API client (user groups, like `vmbot run`)."""
    with FakeSlack() as fake:
        client = WebClient(token=fake.token, base_url=fake.base_url)
        client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
        if not isinstance(bot, Bot):
            bot = bot(client)
        adapter = SlackAdapter(bot, client, SECRET)
        server = serve(slack_wsgi(SlackRequestHandler(adapter.app), adapter.metrics), 0)
        try:
            yield SlackRig(fake, bot, adapter, f"http://127.0.0.1:{server.effective_port}/slack/events")
        finally:
            server.close()
            adapter.close()


def sent_texts(fake: FakeSlack) -> list[str]:
    """Every string the bot sent to Slack, as JSON, for escaping checks."""
    return [json.dumps(c.args, ensure_ascii=False) for c in fake.calls() if not c.method.startswith("upload:")]
