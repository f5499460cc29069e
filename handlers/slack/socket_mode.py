"""Socket Mode: Slack's websocket instead of an inbound port, with redelivery made harmless.

Over Socket Mode nothing is signed and Bolt sees neither headers nor a raw body,
so the HTTP replay guard cannot tell requests apart. What Slack gives instead is
an envelope id per delivery: an envelope that was not acked in time is sent
again with the same id, and a retried event keeps its event id. Each of those
runs once; a repeat is acked (so Slack stops sending it) and dropped.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from handlers.slack.seen import Seen

log = logging.getLogger(__name__)


class EnvelopeGuard:
    """Remembers the deliveries of the last few minutes; True only for the first of each."""

    def __init__(self, window: float = 300.0) -> None:
        self.seen = Seen(window)

    def first(self, req: SocketModeRequest) -> bool:
        keys = [f"envelope:{req.envelope_id}"]
        event_id = req.payload.get("event_id") if req.type == "events_api" else None
        if isinstance(event_id, str) and event_id:
            keys.append(f"event:{event_id}")
        return self.seen.first(keys)


class SocketMode(SocketModeHandler):
    """Bolt's Socket Mode handler with one run per envelope.

    A connection Slack drops without a ``disconnect`` notice is noticed by the
    client's monitor, which runs every ``ping_interval`` seconds: 5 s, not the
    library's 10, so such an outage is short.
    """

    def __init__(
        self,
        app: App,
        app_token: str,
        observe: Callable[[float], None] = lambda _: None,
        acking: Callable[[], AbstractContextManager] = nullcontext,
        concurrency: int = 16,
        ping_interval: float = 5,
    ) -> None:
        super().__init__(app, app_token, concurrency=concurrency, ping_interval=ping_interval)
        self.guard = EnvelopeGuard()
        self.observe = observe  # the ack latency: from the envelope's dispatch to its ack being sent
        self.acking = acking  # spans each envelope until its ack (handlers.slack.ackfirst)

    def trouble(self) -> str | None:
        """Why no command can reach the bot right now, or None: for /healthz."""
        return None if self.client.is_connected() else "the Socket Mode connection is down (reconnecting)"

    def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        if not isinstance(req.envelope_id, str) or not req.envelope_id:
            log.warning("Socket Mode message without an envelope id dropped")
            return
        if not self.guard.first(req):
            log.warning("redelivered Socket Mode envelope acked and dropped")
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        started = time.monotonic()
        with self.acking():
            super().handle(client, req)
        self.observe(time.monotonic() - started)

    def close(self) -> None:
        """Stop promptly. The client's close waits for its reader, which holds a lock in a
        blocking recv (up to 3 s), and for its dispatcher, in a 1 s queue wait: end the
        stream (reconnects off first) and wake the queue."""
        self.client.auto_reconnect_enabled = False
        self.client.closed = True
        self.client.message_queue.put(None)
        session = self.client.current_session
        sock = session.sock if session is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
        super().close()
