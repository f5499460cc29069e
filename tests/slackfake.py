"""A small local fake of the Slack Web API for end-to-end tests (test tier 2).

Why: the Bolt app and slack_sdk's ``WebClient`` are exercised for real (HTTP,
JSON/form encoding, retry handlers, the three-step ``files_upload_v2``) while
nothing leaves 127.0.0.1 and nothing of our own code is mocked. Point the bot
at ``FakeSlack().base_url`` (``WebClient(base_url=...)`` / ``SLACK_API_URL``)
and assert on the recorded calls.

Routes: ``/api/<method>`` (Web API, needs ``Authorization: Bearer <token>``),
``/upload/<file_id>`` (raw bytes, like files.slack.com: no token) and
``/response/<name>`` (a ``response_url``: JSON body, answers ``ok``; like Slack it
takes at most 5 posts per URL: the sixth and later get 404 ``used_url`` and are
recorded with that status, so a test sees what the bot tried to send).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

# Arguments slack_sdk may send JSON-encoded inside a form body; decoded so tests
# see the same shapes whichever encoding the client picked.
_JSON_ARGS = ("blocks", "attachments", "view", "files", "metadata")
_MESSAGE_KEYS = ("text", "blocks", "attachments", "thread_ts", "metadata")
_BOT = {"team_id": "T0TEAM", "user_id": "U0BOT", "bot_id": "B0BOT"}
RESPONSE_URL_POSTS = 5  # Slack: "up to 5 times within 30 minutes" per response_url


@dataclass
class Call:
    """One recorded request: ``method`` is the API method (``chat.postMessage``),
    ``upload:<file_id>`` or ``response_url:<name>``."""

    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    ts: float
    status: int = 200
    response: Any = None


@dataclass
class UploadedFile:
    """A file from files_upload_v2: bytes from step 2, metadata from steps 1 and 3."""

    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    title: str | None = None
    channels: list[str] = field(default_factory=list)
    initial_comment: str | None = None
    thread_ts: str | None = None
    completed: bool = False

    @property
    def channel(self) -> str | None:
        return self.channels[0] if self.channels else None


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """Decode a JSON or form body into a dict (slack_sdk sends both)."""
    try:
        if content_type.split(";")[0].strip().lower() == "application/json":
            data = json.loads(raw.decode("utf-8")) if raw else {}
            return data if isinstance(data, dict) else {"_json": data}
        return dict(urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except (ValueError, UnicodeDecodeError):  # keep what we got: tests may inspect it
        return {"_raw": raw.decode("utf-8", "replace")}


def _decode_json_args(args: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_ARGS:
        value = args.get(key)
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(ValueError):
                args[key] = json.loads(value)
    return args


class FakeSlack:
    """Threaded HTTP fake of Slack; use as a context manager or start()/stop()."""

    def __init__(self, token: str = "xoxb-test-token", app_token: str = "xapp-test-token") -> None:
        self.token, self.app_token = token, app_token
        self.socket_url: Callable[[], str] | None = None  # apps.connections.open answers with it (Socket Mode)
        self.usergroups: dict[str, list[str]] = {}
        self.not_in: set[str] = set()  # channels where chat.postMessage answers not_in_channel
        self.users: dict[str, dict[str, Any]] = {}  # extra fields for users.info
        self.files: dict[str, UploadedFile] = {}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}  # (channel, ts)
        self._calls: list[Call] = []
        self._cond = threading.Condition()
        self._limits: dict[str, list[int]] = {}  # method -> [times_left, retry_after]
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Self:
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # Short poll interval: stop() waits for it, and tests start many fakes.
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeSlack not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """Web API base; the trailing slash matters to slack_sdk."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "r1") -> str:
        return f"http://127.0.0.1:{self.port}/response/{name}"

    # -- test controls -------------------------------------------------------
    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 + Retry-After."""
        with self._cond:
            self._limits[method] = [times, retry_after]

    def calls(self, method: str | None = None) -> list[Call]:
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def posts_per_response_url(self) -> dict[str, int]:
        """How many times the bot posted to each response_url, accepted or not."""
        counts: dict[str, int] = {}
        for c in self.calls():
            if c.method.startswith("response_url:"):
                name = c.method.removeprefix("response_url:")
                counts[name] = counts.get(name, 0) + 1
        return counts

    def refused_posts(self) -> dict[str, int]:
        """Posts past the fifth to one response_url: Slack drops them, so the user never saw them."""
        counts: dict[str, int] = {}
        for c in self.calls():
            if c.method.startswith("response_url:") and c.status == 404:
                name = c.method.removeprefix("response_url:")
                counts[name] = counts.get(name, 0) + 1
        return counts

    def mark(self) -> int:
        """Number of calls so far; pass as ``since`` to wait_for to skip older ones."""
        with self._cond:
            return len(self._calls)

    def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Call:
        """Block until a matching call (already recorded or new) exists; return the first."""
        return self.wait_call(lambda c: c.method == method and (predicate is None or predicate(c)), timeout, since)

    def wait_call(self, match: Callable[[Call], bool], timeout: float = 5.0, since: int = 0) -> Call:
        """Block until any call satisfies ``match``; AssertionError lists what came instead."""

        def find() -> Call | None:
            return next((c for c in self._calls[since:] if match(c)), None)

        with self._cond:
            found = self._cond.wait_for(find, timeout=timeout)
            if found is None:
                seen = [c.method for c in self._calls[since:]]
                raise AssertionError(f"no matching call within {timeout}s; recorded: {seen}")
            return found

    # -- request handling (called from server threads) -----------------------
    def _record(self, call: Call) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _next_ts(self) -> str:
        micros = next(self._ts) * 100
        return f"{1700000000 + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _take_limit(self, method: str) -> int | None:
        with self._cond:
            limit = self._limits.get(method)
            if not limit or limit[0] <= 0:
                return None
            limit[0] -= 1
            return limit[1]

    def _api(
        self, method: str, args: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Return (status, JSON body, extra headers) for one Web API call."""
        auth = headers.get("Authorization", "")
        if method == "apps.connections.open":  # the app-level token, and only it, opens a socket
            if auth != f"Bearer {self.app_token}" or self.socket_url is None:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            return 200, {"ok": True, "url": self.socket_url()}, {}
        if auth != f"Bearer {self.token}" and args.get("token") != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        retry_after = self._take_limit(method)
        if retry_after is not None:
            body = {"ok": False, "error": "ratelimited"}
            return 429, body, {"Retry-After": str(retry_after)}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        return 200, handler(args), {}

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, **_BOT, "team": "vmbot-test", "user": "vmbot"}

    def _m_conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        users = str(args.get("users", ""))
        return {"ok": True, "channel": {"id": "D" + users.replace(",", "")[:10], "is_im": True}}

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        ts, channel = self._next_ts(), str(args.get("channel", ""))
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        message = {"type": "message", "user": "U0BOT", "bot_id": "B0BOT", "ts": ts}
        message["text"] = args.get("text", "")
        message.update({k: v for k, v in args.items() if k in _MESSAGE_KEYS})
        with self._cond:
            self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self._next_ts()}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        with self._cond:
            msg = self.messages.setdefault((channel, ts), {"type": "message", "ts": ts})
            msg.update({k: v for k, v in args.items() if k in _MESSAGE_KEYS})
            msg = dict(msg)  # the reply is serialised outside the lock
        text = args.get("text", "")
        return {"ok": True, "channel": channel, "ts": ts, "text": text, "message": msg}

    def _m_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = dict(args.get("view") or {})
        view.update(id=f"V{next(self._ids):07d}", team_id="T0TEAM", hash=f"{time.time()}")
        return {"ok": True, "view": view}

    def _m_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = str(args.get("usergroup", ""))
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        uid = str(args.get("user", ""))
        user = {"id": uid, "team_id": "T0TEAM", "name": uid.lower(), "real_name": uid}
        user.update(is_bot=False, deleted=False)
        user.update(self.users.get(uid, {}))
        return {"ok": True, "user": user}

    def _m_conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = str(args.get("channel", ""))
        is_im = cid.startswith("D")
        channel = {"id": cid, "name": cid.lower(), "is_im": is_im}
        channel.update(is_channel=not is_im, is_private=cid.startswith("G"))
        return {"ok": True, "channel": channel}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ids):07d}"
        with self._cond:
            self.files[file_id] = UploadedFile(file_id, str(args.get("filename", "")), int(args.get("length", 0)))
        url = f"http://127.0.0.1:{self.port}/upload/{file_id}"
        return {"ok": True, "upload_url": url, "file_id": file_id}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        entries = args.get("files") or []
        wanted = str(args.get("channels") or args.get("channel_id") or "")
        channels = [c for c in wanted.split(",") if c]
        out = []
        with self._cond:
            for entry in entries:
                f = self.files.get(str(entry.get("id")))
                if f is None or f.data is None:
                    return {"ok": False, "error": "file_not_found"}
                f.title = entry.get("title") or f.filename
                f.channels, f.completed = channels, True
                f.initial_comment = args.get("initial_comment")
                f.thread_ts = args.get("thread_ts")
                out.append({"id": f.file_id, "name": f.filename, "title": f.title})
                out[-1]["size"] = len(f.data)
        return {"ok": True, "files": out}


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the owning FakeSlack (set as a class attribute)."""

    fake: FakeSlack
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        fake = self.fake
        url = urllib.parse.urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()}
        now, ctype = time.time(), headers.get("Content-Type", "")
        if url.path.startswith("/upload/"):  # step 2 of files_upload_v2: raw bytes
            file_id = url.path.removeprefix("/upload/")
            with fake._cond:
                f = fake.files.get(file_id)
                if f is not None:
                    f.data = raw
            status = 200 if f is not None else 404
            args = {"length": len(raw)}
            fake._record(Call(f"upload:{file_id}", args, headers, now, status, "OK"))
            return self._reply(status, b"OK - %d" % len(raw), "text/plain")
        if url.path.startswith("/response/"):
            name = "response_url:" + url.path.removeprefix("/response/")
            args = _parse_body(ctype, raw)
            with fake._cond:
                used = sum(1 for c in fake._calls if c.method == name and c.status == 200)
            status, answer = (200, "ok") if used < RESPONSE_URL_POSTS else (404, "used_url")
            fake._record(Call(name, args, headers, now, status, answer))
            return self._reply(status, answer.encode(), "text/plain")
        method = url.path.removeprefix("/api/")
        args = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        args = _decode_json_args({**args, **_parse_body(ctype, raw)})
        status, body, extra = fake._api(method, args, headers)
        fake._record(Call(method, args, headers, now, status, body))
        ctype = "application/json; charset=utf-8"
        self._reply(status, json.dumps(body).encode(), ctype, extra)

    do_POST = _handle
    do_GET = _handle
