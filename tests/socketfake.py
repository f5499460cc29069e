"""A local stand-in for Slack's Socket Mode endpoint (test tier 2, second transport).

Slack's side of Socket Mode is a websocket: it says ``hello``, sends envelopes
(``slash_commands``, ``interactive``, ``events_api``), expects each acked by
``envelope_id``, and may send ``disconnect`` (``refresh_requested``, ``warning``)
before it closes a connection; the client then asks ``apps.connections.open`` for
a new URL. ``FakeSlack`` answers that call with :meth:`FakeSocketMode.url`.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any, Self

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve


@dataclass
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None
    connection: int


class FakeSocketMode:
    """Websocket server on 127.0.0.1; every connection gets ``hello`` and may carry envelopes."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.connections: list[ServerConnection] = []
        self.closed: list[int] = []  # indexes of connections the client closed
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._server: Server | None = None

    def __enter__(self) -> Self:
        self._server = serve(self._serve, "127.0.0.1", 0)
        threading.Thread(target=self._server.serve_forever, name="fake-socket-mode", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()

    def url(self) -> str:
        assert self._server is not None
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}/link/?ticket={next(self._ids)}"

    # -- what the client sees ------------------------------------------------
    def _serve(self, conn: ServerConnection) -> None:
        with self._cond:
            index = len(self.connections)
            self.connections.append(conn)
            self._cond.notify_all()
        conn.send(json.dumps({"type": "hello", "num_connections": 1, "debug_info": {"host": "fake"}}))
        try:
            for raw in conn:
                message = json.loads(raw)
                with self._cond:
                    self.acks.append(Ack(message["envelope_id"], message.get("payload"), index))
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        with self._cond:
            self.closed.append(index)
            self._cond.notify_all()

    # -- test controls -------------------------------------------------------
    def send(self, kind: str, payload: dict[str, Any], envelope_id: str | None = None, **extra: Any) -> str:
        """Deliver one envelope on the newest connection; returns its id (pass it again to redeliver)."""
        envelope_id = envelope_id or f"env-{next(self._ids):06d}"
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload}
        envelope.update(accepts_response_payload=kind != "events_api", **extra)
        self.wait_connections(1)
        self.connections[-1].send(json.dumps(envelope))
        return envelope_id

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's notice that this connection is going away: the client must open a new one."""
        self.connections[-1].send(json.dumps({"type": "disconnect", "reason": reason, "debug_info": {}}))

    def drop(self) -> None:
        """Close the newest connection from Slack's side (a close frame, no notice before)."""
        conn = self.connections[-1]
        threading.Thread(target=conn.close, name="fake-socket-close", daemon=True).start()

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.connections) >= count, timeout):
                raise AssertionError(f"{len(self.connections)} connection(s) within {timeout}s, wanted {count}")

    def wait_ack(self, envelope_id: str, timeout: float = 3.0) -> Ack:
        """The ack Slack needs within 3 s; AssertionError if it does not come."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: next((a for a in self.acks if a.envelope_id == envelope_id), None), timeout
            )
        if found is None:
            raise AssertionError(f"envelope {envelope_id} not acked within {timeout}s")
        return found

    def acked(self, envelope_id: str) -> int:
        with self._cond:
            return sum(a.envelope_id == envelope_id for a in self.acks)

    def wait_closed(self, index: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: index in self.closed, timeout):
                raise AssertionError(f"connection {index} still open after {timeout}s")
