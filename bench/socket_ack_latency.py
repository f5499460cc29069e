"""Ack latency of /vm over Socket Mode: vmbot vs a no-op Bolt app, same websocket stand-in, same run.

N slash-command envelopes, C in flight at a time, sent by a local stand-in for
Slack's Socket Mode endpoint (tests/socketfake.py) to each app; the time is from
sending an envelope to receiving its ack (what Slack waits 3 s for). The
baseline is Bolt's own SocketModeHandler with a listener that only acks; vmbot
adds its envelope guard, its adapter and the bot behind it.

    .venv/bin/python bench/socket_ack_latency.py [--n 200] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from bot.config import demo
from bot.policy import AllowAll
from bot.service import Bot
from handlers.slack.app import SlackAdapter
from handlers.slack.run import settle_heap
from handlers.slack.socket_mode import SocketMode
from tests import slacksign
from tests.slackfake import FakeSlack
from tests.socketfake import FakeSocketMode

COMMANDS = ["list --all", "state centos7", "info ubuntu20", "suspend web-server", "resume web-server"]


def measure(socket: FakeSocketMode, fake: FakeSlack, n: int, concurrency: int) -> list[float]:
    def one(i: int) -> float:
        fields = slacksign.slash_fields(COMMANDS[i % len(COMMANDS)], response_url=fake.response_url(f"b{i}"))
        started = time.perf_counter()
        socket.wait_ack(socket.send("slash_commands", fields))
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(one, range(n)))


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] * 1000


def run_one(fake: FakeSlack, start: object, n: int, concurrency: int) -> list[float]:
    with FakeSocketMode() as socket:
        fake.socket_url = socket.url
        handler = start()  # type: ignore[operator]
        handler.connect()
        socket.wait_connections(1)
        measure(socket, fake, 20, concurrency)  # warm up
        xs = measure(socket, fake, n, concurrency)
        handler.close()
    return xs


def vmbot_socket(adapter: SlackAdapter, app_token: str) -> SocketMode:
    """As `vmbot run` connects it: acks hold back work after earlier acks, the start-up heap set aside."""
    settle_heap()
    return SocketMode(adapter.app, app_token, acking=adapter.ack_first.acking)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=20)
    args = ap.parse_args()
    with FakeSlack() as fake:
        client = WebClient(token=fake.token, base_url=fake.base_url)
        noop = App(client=client, signing_secret="unused")
        noop.command("/vm")(lambda ack: ack())
        bot = Bot(demo(), AllowAll())
        adapter = SlackAdapter(bot, client, "unused")
        results = {
            "no-op Bolt": run_one(fake, lambda: SocketModeHandler(noop, fake.app_token), args.n, args.concurrency),
            "vmbot": run_one(fake, lambda: vmbot_socket(adapter, fake.app_token), args.n, args.concurrency),
        }
        adapter.close()
        bot.close()
    print(f"{args.n} slash commands over Socket Mode, {args.concurrency} in flight, local websocket stand-in")
    for name, xs in results.items():
        print(f"  {name:<11} p50 {pct(xs, 50):6.1f} ms   p99 {pct(xs, 99):6.1f} ms   max {max(xs) * 1000:6.1f} ms")
    ratio = pct(results["vmbot"], 99) / pct(results["no-op Bolt"], 99)
    print(f"  vmbot p99 / no-op p99 = {ratio:.2f}x  (Slack's limit: 3000 ms)")


if __name__ == "__main__":
    main()
