"""Prove the Slack fake and the signing helpers behave like Slack for a real
``slack_sdk.WebClient`` and ``SignatureVerifier``, so end-to-end tests built on
them test the bot rather than the fixtures."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.slackfake import FakeSlack
from tests.slacksign import (
    JSON,
    app_home_opened_body,
    block_action_body,
    post,
    signed_headers,
    slash_body,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as f:
        yield f


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token=fake.token, base_url=fake.base_url)


def test_auth_test(client: WebClient) -> None:
    resp = client.auth_test()
    assert (resp["user_id"], resp["bot_id"], resp["team_id"]) == (
        "U0BOT",
        "B0BOT",
        "T0TEAM",
    )


def test_post_message_with_blocks_is_recorded(fake: FakeSlack, client: WebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*web-01* running"}}]
    first = client.chat_postMessage(channel="C0OPS", text="web-01 running", blocks=blocks)
    second = client.chat_postMessage(channel="C0OPS", text="again")
    assert first["ok"] and first["channel"] == "C0OPS"
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["blocks"] == blocks
    call = fake.wait_for("chat.postMessage")
    assert call.args["blocks"] == blocks and call.args["text"] == "web-01 running"
    assert call.headers["Content-Type"].startswith("application/json")
    assert len(fake.calls("chat.postMessage")) == 2


def test_chat_update(fake: FakeSlack, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C0OPS", text="waiting for approval")
    resp = client.chat_update(channel="C0OPS", ts=posted["ts"], text="approved", blocks=[])
    assert resp["ok"] and resp["ts"] == posted["ts"] and resp["text"] == "approved"
    assert fake.wait_for("chat.update").args["ts"] == posted["ts"]
    assert fake.messages[("C0OPS", posted["ts"])]["text"] == "approved"


def test_invalid_token_rejected(fake: FakeSlack) -> None:
    bad = WebClient(token="xoxb-wrong", base_url=fake.base_url)
    with pytest.raises(SlackApiError) as err:
        bad.chat_postMessage(channel="C0OPS", text="hi")
    assert err.value.response["error"] == "invalid_auth"
    assert fake.calls("chat.postMessage")[0].response == {
        "ok": False,
        "error": "invalid_auth",
    }


def test_unknown_method_recorded(client: WebClient, fake: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as err:
        client.api_call("no.such.method")
    assert err.value.response["error"] == "unknown_method"
    assert fake.calls("no.such.method")


def test_rate_limit_then_retry_succeeds(fake: FakeSlack, client: WebClient) -> None:
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    fake.rate_limit("chat.postMessage", times=1, retry_after=0)
    resp = client.chat_postMessage(channel="C0OPS", text="digest part 1")
    assert resp["ok"]
    calls = fake.calls("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]


def test_rate_limit_without_retry_handler_fails(fake: FakeSlack, client: WebClient) -> None:
    fake.rate_limit("chat.postMessage", times=1, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0OPS", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"


def test_files_upload_v2_keeps_bytes(fake: FakeSlack, client: WebClient) -> None:
    resp = client.files_upload_v2(
        content=PNG,
        filename="web-01.png",
        title="web-01 screen",
        channel="C0OPS",
        initial_comment="screenshot",
        thread_ts="1700000000.000100",
    )
    assert resp["ok"]
    (stored,) = fake.files.values()
    assert stored.data == PNG and stored.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (stored.filename, stored.title, stored.channel) == (
        "web-01.png",
        "web-01 screen",
        "C0OPS",
    )
    assert (stored.initial_comment, stored.thread_ts, stored.completed) == (
        "screenshot",
        "1700000000.000100",
        True,
    )
    assert resp["file"]["id"] == stored.file_id
    methods = [c.method for c in fake.calls()]
    assert methods == [
        "files.getUploadURLExternal",
        f"upload:{stored.file_id}",
        "files.completeUploadExternal",
    ]


def test_usergroups_users_info_views(fake: FakeSlack, client: WebClient) -> None:
    fake.usergroups = {"S123": ["U1", "U2"]}
    assert client.usergroups_users_list(usergroup="S123")["users"] == ["U1", "U2"]
    assert client.users_info(user="U1")["user"]["id"] == "U1"
    assert client.conversations_info(channel="C0OPS")["channel"]["id"] == "C0OPS"
    view = client.views_publish(user_id="U1", view={"type": "home", "blocks": []})["view"]
    assert view["id"] and view["type"] == "home"
    assert fake.wait_for("views.publish").args["user_id"] == "U1"
    assert client.chat_postEphemeral(channel="C0OPS", user="U1", text="only you")["message_ts"]


def test_response_url_post_recorded(fake: FakeSlack) -> None:
    url = fake.response_url("r1")
    resp = WebhookClient(url).send(text="done", replace_original=True)
    assert (resp.status_code, resp.body) == (200, "ok")
    call = fake.wait_for("response_url:r1")
    assert call.args == {"text": "done", "replace_original": True}


def test_a_sixth_post_to_one_response_url_is_refused(fake: FakeSlack) -> None:
    """Slack takes at most 5 posts per response_url; the fake refuses the sixth and records it."""
    url = fake.response_url("five")
    answers = [WebhookClient(url).send(text=f"page {i}") for i in range(1, 7)]
    assert [a.status_code for a in answers] == [200] * 5 + [404]
    assert answers[5].body == "used_url"
    assert fake.refused_posts() == {"five": 1}
    assert [c.status for c in fake.calls("response_url:five")] == [200] * 5 + [404]
    assert fake.posts_per_response_url() == {"five": 6}
    assert WebhookClient(fake.response_url("other")).send(text="x").status_code == 200


def test_wait_for_blocks_until_call_arrives(fake: FakeSlack, client: WebClient) -> None:
    since = fake.mark()
    timer = threading.Timer(0.2, lambda: client.chat_postMessage(channel="C9", text="late"))
    timer.start()
    call = fake.wait_for("chat.postMessage", lambda c: c.args["channel"] == "C9", timeout=5, since=since)
    assert call.args["text"] == "late"
    timer.join()


def test_wait_for_timeout_raises(fake: FakeSlack, client: WebClient) -> None:
    client.auth_test()
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"no matching call.*auth.test"):
        fake.wait_for("chat.update", timeout=0.3)
    assert time.monotonic() - start < 2


def test_signed_headers_verify() -> None:
    body = slash_body("start web-01")
    headers = signed_headers(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body.replace(b"web-01", b"web-02"), headers)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)
    stale = signed_headers(SECRET, body, timestamp=int(time.time()) - 3600)
    assert not verifier.is_valid_request(body, stale)


def _form(body: bytes) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(body.decode()))


def test_payload_shapes() -> None:
    slash = _form(slash_body("list --all", response_url="http://x/r"))
    assert (slash["command"], slash["text"]) == ("/vm", "list --all")
    assert (slash["user_id"], slash["channel_id"]) == ("U0ALICE", "C0OPS")
    assert slash["response_url"] == "http://x/r" and slash["trigger_id"]
    ts = "1700000000.000100"
    body = block_action_body("approve", "42", "U0BOB", "C0OPS", ts, "http://x/r")
    payload = json.loads(_form(body)["payload"])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0BOB"
    (action,) = payload["actions"]
    assert (action["action_id"], action["value"]) == ("approve", "42")
    assert payload["container"]["message_ts"] == ts
    home = app_home_opened_body("U0ALICE")
    event = json.loads(home)["event"]
    assert (event["type"], event["user"]) == ("app_home_opened", "U0ALICE")
    headers = signed_headers(SECRET, home, content_type=JSON)
    assert headers["Content-Type"] == JSON
    assert SignatureVerifier(SECRET).is_valid_request(home, headers)


def test_post_returns_status_for_errors(fake: FakeSlack) -> None:
    status, text = post(fake.response_url("r2"), b'{"text": "hi"}', {"Content-Type": "application/json"})
    assert (status, text) == (200, "ok")
    status, _ = post(f"http://127.0.0.1:{fake.port}/upload/F-missing", b"data", {})
    assert status == 404
