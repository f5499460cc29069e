"""``vmbot run``: check the environment, then serve Slack over Socket Mode or HTTP."""

from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from waitress.server import BaseWSGIServer

from bot.config import Config
from bot.policy import Policy
from bot.reports.alerts import Alerts
from bot.service import Bot
from bot.store.audit import Actor
from handlers.slack.app import SlackAdapter
from handlers.slack.groups import GroupMembers, slack_groups
from handlers.slack.server import SLACK_THREADS, WSGI, health_wsgi, serve, slack_wsgi, stop_server
from handlers.slack.socket_mode import SocketMode


class StartupError(Exception):
    """A missing token or unsafe setting: one line, exit 2."""


def api_url(value: str | None) -> str | None:
    """SLACK_API_URL must be https, or http to a loopback address (tests, local proxies)."""
    if not value:
        return None
    parts = urlsplit(value)
    host = parts.hostname or ""
    loopback = host == "localhost" or _is_loopback(host)
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise StartupError("SLACK_API_URL must be https://… or a loopback http:// address")
    return value if value.endswith("/") else value + "/"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_from_env(env: dict[str, str]) -> WebClient:
    token = env.get("SLACK_BOT_TOKEN")
    if not token:
        raise StartupError("SLACK_BOT_TOKEN is not set (the bot token, xoxb-…)")
    kwargs = {"base_url": url} if (url := api_url(env.get("SLACK_API_URL"))) else {}
    client = WebClient(token=token, **kwargs)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=3))
    return client


LEASE = "scheduler"
LEASE_TTL = 60.0
SWEEP_EVERY = 10.0


def housekeeping(bot: Bot, adapter: SlackAdapter, stop: threading.Event) -> None:
    """Only the process holding the lease expires requests and posts ones made elsewhere."""
    while True:
        try:
            held = bot.locks.renew_lease(LEASE, LEASE_TTL) or bot.locks.acquire_lease(LEASE, LEASE_TTL)
            if held:
                bot.sweep_expired()
                adapter.approval_messages.catch_up()
        except Exception:
            logging.getLogger(__name__).exception("housekeeping failed; trying again")
        if stop.wait(SWEEP_EVERY):
            return


def bind(app: WSGI, port: int, flag: str = "--http", threads: int = SLACK_THREADS) -> BaseWSGIServer:
    """Serve on 127.0.0.1:PORT, or one StartupError line naming the flag that chose the port."""
    try:
        return serve(app, port, threads=threads)
    except OSError as e:
        hint = " or --no-metrics" if flag == "--metrics-port" else ""
        why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise StartupError(f"cannot listen on 127.0.0.1:{port} ({flag}): {why}; choose another {flag}{hint}") from None


def listen(adapter: SlackAdapter, app_token: str | None, port: int) -> SocketMode | BaseWSGIServer:
    """Slack's way in: a Socket Mode connection when there is an app token, else the HTTP endpoint."""
    if app_token is None:
        server = bind(slack_wsgi(SlackRequestHandler(adapter.app), adapter.metrics, adapter.ack_first.acking), port)
        print(f"vmbot: serving POST /slack/events on 127.0.0.1:{server.effective_port}", file=sys.stderr)
        return server
    handler = SocketMode(adapter.app, app_token, adapter.metrics.ack.observe, adapter.ack_first.acking)
    errors: list[Exception] = []
    handler.client.on_error_listeners.append(errors.append)  # the client logs a failed connect, and goes on
    try:
        handler.connect()
    except SlackApiError as e:
        errors.append(RuntimeError(f"Slack refused it: {e.response.get('error')}"))
    handler.client.on_error_listeners.remove(errors.append)
    if errors or not handler.client.is_connected():
        handler.close()
        why = errors[0] if errors else "no connection"
        raise StartupError(f"could not open the Socket Mode connection: {getattr(why, 'strerror', None) or why}")
    print("vmbot: connected to Slack over Socket Mode", file=sys.stderr)
    return handler


SECRETS = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN")


def take_secrets() -> dict[str, str]:
    """The environment, with the Slack secrets taken out of the process's own.

    Child processes (ssh for qemu+ssh hosts) never inherit them, and Bolt does
    not find a second copy of the bot token beside the client it is given.
    """
    env = dict(os.environ)
    for name in SECRETS:
        os.environ.pop(name, None)
    return env


def start_schedule(bot: Bot, adapter: SlackAdapter, stop: threading.Event) -> tuple[Alerts, list[threading.Thread]]:
    """The scheduler and the alerts, both acting only while this process holds the lease."""
    leader = lambda: bot.locks.renew_lease(LEASE, LEASE_TTL) or bot.locks.acquire_lease(LEASE, LEASE_TTL)  # noqa: E731
    bot.desk.publish = adapter.publish_report
    for name, why in bot.desk.unavailable().items():
        logging.getLogger(__name__).warning("[schedule] %s is not scheduled: %s", name, why)
    scheduler = bot.desk.scheduler(leader)
    loop = lambda: (scheduler.serve(stop), scheduler.wait())  # noqa: E731  # ends once its jobs in flight are done
    timers = [threading.Thread(target=loop, name="scheduler", daemon=True)]
    channel = bot.config.slack.get("alerts_channel")
    sink = (lambda alert: adapter.post_alert(channel, alert)) if channel else None
    alerts = bot.desk.alerts(sink, active=lambda: holds_lease(bot))
    every = bot.config.probe_interval
    timers.append(threading.Thread(target=alerts.heartbeat, args=(stop, every), name="heartbeat", daemon=True))
    for timer in timers:
        timer.start()
    return alerts, timers


def holds_lease(bot: Bot) -> bool:
    row = bot.locks.lease_holder(LEASE)
    return bool(row) and row["pid"] == os.getpid() and row["expires"] > time.time()


def settle_heap() -> None:
    """Set the start-up heap aside from the garbage collector, once built, before serving.

    Every full collection walked every object made at start (libvirt, Bolt, the SDKs, the
    store): 40-50 ms holding the GIL, and each ack in flight waited for it. The first burst
    of commands after a quiet spell set one off, so those acks were the slowest (p99 2-5x a
    no-op Bolt app's). Frozen objects are never scanned again; garbage made since is.
    """
    gc.collect()
    gc.freeze()


def run(
    config: Config,
    make_policy: Callable[[GroupMembers], Policy],
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
) -> int:
    """Check the environment, build the policy with Slack's user groups, serve until SIGTERM."""
    env = take_secrets() if env is None else dict(env)
    socket = args.socket or (bool(env.get("SLACK_APP_TOKEN")) and not args.http)
    try:
        client = client_from_env(env)
        secret = env.get("SLACK_SIGNING_SECRET", "")
        if not socket and not secret:
            raise StartupError("SLACK_SIGNING_SECRET is not set (needed to verify requests over HTTP)")
        if socket and not env.get("SLACK_APP_TOKEN"):
            raise StartupError("--socket needs SLACK_APP_TOKEN (the app-level token, xapp-…)")
        if not socket and not args.http:
            raise StartupError("choose --http PORT or set SLACK_APP_TOKEN for Socket Mode")
    except StartupError as e:
        print(f"vmbot: {e}", file=sys.stderr)
        return 2
    bot = Bot(config, make_policy(slack_groups(client)))  # user groups from the Web API, given at build time
    # The inventory's first resync connects every host now, so changes made outside the bot are heard
    # before the first command (a second fan-out to connect, as events.watch() does, would only compete).
    bot.kept.keep()  # list and App Home read it; vmbot exec next to us finds hosts in it
    adapter = SlackAdapter(bot, client, secret)
    settle_heap()
    listener: SocketMode | BaseWSGIServer | None = None
    health: BaseWSGIServer | None = None
    try:
        listener = listen(adapter, env["SLACK_APP_TOKEN"] if socket else None, args.http)
        trouble = listener.trouble if isinstance(listener, SocketMode) else lambda: None
        if not getattr(args, "no_metrics", False):
            health = bind(health_wsgi(bot.pool, adapter.metrics, trouble), args.metrics_port, "--metrics-port", 2)
    except StartupError as e:
        print(f"vmbot: {e}", file=sys.stderr)
        if listener is not None:
            listener.close()
        adapter.close()
        bot.close()
        return 2
    stop, quiet = threading.Event(), threading.Event()  # quiet: commands drained, housekeeping may end
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    system = Actor(user="system", source="signal")
    signal.signal(signal.SIGHUP, lambda *_: adapter.submit(bot.reload_policy, system))
    keeper = threading.Thread(target=housekeeping, args=(bot, adapter, quiet), name="housekeeping", daemon=True)
    keeper.start()
    alerts, timers = start_schedule(bot, adapter, stop)  # the scheduler and heartbeat end with SIGTERM
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    shut_down(listener, (alerts, timers), adapter, (quiet, keeper), health, bot)
    return 0


def shut_down(
    listener: SocketMode | BaseWSGIServer,
    schedule: tuple[Alerts, list[threading.Thread]],
    adapter: SlackAdapter,
    housekeeper: tuple[threading.Event, threading.Thread],
    health: BaseWSGIServer | None,
    bot: Bot,
) -> None:
    """In order, each step said on stderr: nothing new comes in (commands, scheduled jobs, alerts),
    what was acked is answered, the lease holder's sweep stops and lets go of the lease, then health
    and the bot close."""
    step = lambda what: print(f"vmbot: stopping: {what}", file=sys.stderr, flush=True)  # noqa: E731
    stop_server(listener) if isinstance(listener, BaseWSGIServer) else listener.close()
    step("listener closed, no new commands")
    alerts, timers = schedule
    for timer in timers:  # a job under way finishes; SIGTERM already told them not to start another
        timer.join(LEASE_TTL)
    alerts.close()
    step("scheduler and alerts stopped")
    adapter.close()
    step("commands in flight answered")
    quiet, keeper = housekeeper
    quiet.set()
    keeper.join(SWEEP_EVERY + LEASE_TTL)  # a sweep under way finishes; the next wait returns at once
    bot.locks.release_lease(LEASE)
    step("housekeeping joined, scheduler lease released")
    if health is not None:
        stop_server(health)
    bot.close()
    step("bot closed")
