"""HTTP serving: Slack's endpoint on one loopback port, health and metrics on another.

waitress is the production WSGI server; TLS belongs to the reverse proxy in front.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

from prometheus_client import make_wsgi_app
from slack_bolt.adapter.wsgi import SlackRequestHandler
from waitress import create_server
from waitress.server import BaseWSGIServer

from bot.hypervisor.pool import Pool
from handlers.slack.metrics import Metrics

log = logging.getLogger(__name__)
WSGI = Callable[[dict, Callable], Iterable[bytes]]
SLACK_THREADS = 24  # requests served at once: 20 slash commands in flight must not queue (waitress warns)


def slack_wsgi(
    handler: SlackRequestHandler,
    metrics: Metrics,
    acking: Callable[[], AbstractContextManager] = nullcontext,
) -> WSGI:
    """Bolt's WSGI handler, timed: the ack latency Slack sees, minus the network.

    ``acking`` spans each request (handlers.slack.ackfirst): work after earlier acks waits meanwhile.
    """

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        with acking():
            return answer(environ, start_response)

    def answer(environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.monotonic()
        stamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
        if environ.get("PATH_INFO") == handler.path and not (stamp.isascii() and stamp.isdigit() and len(stamp) < 16):
            # slack_sdk's verifier raises on a timestamp that is not a number (a 500 and a traceback in the log)
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"invalid request"]
        try:
            return handler(environ, start_response)
        except ValueError:  # Bolt parses the body before it checks the signature
            log.warning("malformed request body refused")
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"malformed request"]
        finally:
            if environ.get("PATH_INFO") == handler.path:
                metrics.ack.observe(time.monotonic() - started)

    return app


def health_wsgi(pool: Pool, metrics: Metrics, slack: Callable[[], str | None] = lambda: None) -> WSGI:
    """/healthz is ok only while Slack can reach the bot (``slack`` says why not); hosts down are listed."""
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            return prom(environ, start_response)
        if path == "/healthz":
            down = {h: d.reason for h in pool.names if (d := pool.status(h))}
            trouble = slack()
            health = {"ok": trouble is None, "hosts": len(pool.names), "down": sorted(down)}
            body = json.dumps({**health, **({"slack": trouble} if trouble else {})}).encode()
            start_response(
                "200 OK" if trouble is None else "503 Service Unavailable", [("Content-Type", "application/json")]
            )
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    return app


def serve(app: WSGI, port: int, threads: int = SLACK_THREADS) -> BaseWSGIServer:
    """Start a loopback waitress server in a daemon thread; port 0 picks a free one."""
    # poll(), not select(): select() fails once the process holds more than 1024 descriptors
    server = create_server(app, host="127.0.0.1", port=port, threads=threads, ident="vmbot", asyncore_use_poll=True)
    threading.Thread(target=_run, args=(server,), name=f"http-{server.effective_port}", daemon=True).start()
    return server


def stop_server(server: BaseWSGIServer, timeout: float = 5.0) -> None:
    """Close the socket (nothing new is accepted), then let waitress's request threads finish and end."""
    server.close()
    server.task_dispatcher.shutdown(cancel_pending=False, timeout=timeout)


def _run(server: BaseWSGIServer) -> None:
    """waitress's loop ends with an error when its socket is closed from another thread: that is a stop."""
    try:
        server.run()
    except (OSError, ValueError):
        if server.socket.fileno() != -1:  # not closed by us: a real failure
            raise
