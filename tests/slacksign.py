"""Build and sign requests the way Slack sends them to our app (test tier 2).

Why: end-to-end tests drive the real Bolt app over HTTP, so requests must carry
a valid v0 signature (``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}`` keyed
with the signing secret, as ``slack_sdk.signature.SignatureVerifier`` checks)
and bodies shaped like Slack's own payloads. The signature is computed here by
hand, not via slack_sdk, so the tests cross-check the two implementations.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TEAM_ID = "T0TEAM"
TEAM_DOMAIN = "vmbot-test"
APP_ID = "A0VMBOT"
BOT_USER_ID = "U0BOT"
# A loopback URL nothing listens on: a test that forgets to pass a fake's
# response_url fails fast instead of reaching hooks.slack.com.
UNSET_RESPONSE_URL = "http://127.0.0.1:9/response/unset"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

_seq = itertools.count(1)


def _trigger_id() -> str:
    return f"{int(time.time())}.{next(_seq)}.{hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:16]}"


def _user_name(user_id: str) -> str:
    return user_id.removeprefix("U0").lower() or user_id.lower()


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """Slack's v0 request signature for ``body`` sent at ``timestamp``."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, timestamp: int | None = None, content_type: str = FORM) -> dict[str, str]:
    """Headers Slack sends with a request; ``timestamp`` defaults to now (Bolt
    rejects ones older than 5 minutes, so pass an old one to test that)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": signature(secret, body, ts),
        "Content-Type": content_type,
    }


def slash_fields(
    text: str,
    user_id: str = "U0ALICE",
    channel_id: str = "C0OPS",
    command: str = "/vm",
    response_url: str = UNSET_RESPONSE_URL,
    trigger_id: str | None = None,
) -> dict[str, str]:
    """The fields Slack sends with a slash command (a form over HTTP, a JSON payload over Socket Mode)."""
    return {
        "token": "verification-token-unused",
        "team_id": TEAM_ID,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_id.lower(),
        "user_id": user_id,
        "user_name": _user_name(user_id),
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _trigger_id(),
    }


def slash_body(text: str, **kw: Any) -> bytes:
    """Form body of a slash command invocation over HTTP."""
    return urllib.parse.urlencode(slash_fields(text, **kw)).encode()


def block_action_payload(
    action_id: str,
    value: str,
    user_id: str = "U0BOB",
    channel_id: str = "C0OPS",
    message_ts: str = "1700000000.000100",
    response_url: str = UNSET_RESPONSE_URL,
    block_id: str = "vmbot_actions",
    message: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``block_actions`` interaction payload for one button click."""
    now = f"{time.time():.6f}"
    msg = message or {
        "type": "message",
        "ts": message_ts,
        "user": BOT_USER_ID,
        "bot_id": "B0BOT",
        "text": "",
        "blocks": [],
    }
    return {
        "type": "block_actions",
        "user": {
            "id": user_id,
            "username": _user_name(user_id),
            "name": _user_name(user_id),
            "team_id": TEAM_ID,
        },
        "api_app_id": APP_ID,
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": _trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_id.lower()},
        "message": msg,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": action_id, "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": now,
            }
        ],
    }


def block_action_body(
    action_id: str,
    value: str,
    user_id: str = "U0BOB",
    channel_id: str = "C0OPS",
    message_ts: str = "1700000000.000100",
    response_url: str = UNSET_RESPONSE_URL,
    block_id: str = "vmbot_actions",
    message: dict[str, Any] | None = None,
) -> bytes:
    """Form body ``payload=<json>`` as Slack posts a button click."""
    payload = block_action_payload(
        action_id,
        value,
        user_id,
        channel_id,
        message_ts,
        response_url,
        block_id,
        message,
    )
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def app_home_opened_body(user_id: str, channel_id: str = "D0HOME") -> bytes:
    """JSON ``event_callback`` body of an ``app_home_opened`` event over HTTP.
    Sign it with ``signed_headers(..., content_type=JSON)``."""
    return json.dumps(app_home_opened_event(user_id, channel_id)).encode()


def app_home_opened_event(user_id: str, channel_id: str = "D0HOME") -> dict[str, Any]:
    """The ``event_callback`` of an ``app_home_opened`` event (the payload of an events_api envelope)."""
    now = time.time()
    return {
        "token": "verification-token-unused",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": {
            "type": "app_home_opened",
            "user": user_id,
            "channel": channel_id,
            "tab": "home",
            "event_ts": f"{now:.6f}",
        },
        "type": "event_callback",
        "event_id": f"Ev{next(_seq):08d}",
        "event_time": int(now),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, str]:
    """POST and return (status, text); HTTP errors (4xx/5xx) are returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")
