"""Ack latency of /vm over HTTP: vmbot's Bolt app vs a no-op Bolt app, same server, same run.

200 signed slash commands, 20 in flight at a time, to each app served by
waitress on 127.0.0.1, with the fake Slack Web API behind both. Prints p50 and
p99 of the time until the HTTP answer (the ack Slack waits for).

    .venv/bin/python bench/ack_latency.py [--n 200] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

from bot.config import demo
from bot.policy import AllowAll
from bot.service import Bot
from handlers.slack.app import SlackAdapter
from handlers.slack.server import serve, slack_wsgi
from tests import slacksign
from tests.slackfake import FakeSlack

SECRET = "bench-secret"
COMMANDS = ["list --all", "state centos7", "info ubuntu20", "suspend web-server", "resume web-server"]


def measure(url: str, fake: FakeSlack, n: int, concurrency: int) -> list[float]:
    def one(i: int) -> float:
        body = slacksign.slash_body(COMMANDS[i % len(COMMANDS)], response_url=fake.response_url(f"b{i}"))
        headers = slacksign.signed_headers(SECRET, body)
        started = time.perf_counter()
        status, _ = slacksign.post(url, body, headers)
        assert status == 200, status
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(one, range(n)))


def noop_app(client: WebClient) -> App:
    app = App(client=client, signing_secret=SECRET)
    app.command("/vm")(lambda ack: ack())
    return app


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] * 1000


class Queued(logging.Handler):
    """Counts waitress's "Task queue depth" warnings: a request that waited for a thread."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Task queue depth" in record.getMessage()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=20)
    args = ap.parse_args()
    with FakeSlack() as fake:
        client = WebClient(token=fake.token, base_url=fake.base_url)
        bot = Bot(demo(), AllowAll())
        adapter = SlackAdapter(bot, client, SECRET)
        ours = serve(slack_wsgi(SlackRequestHandler(adapter.app), adapter.metrics), 0)
        base = serve(SlackRequestHandler(noop_app(client)), 0)
        results, queued = {}, {}
        waitress = logging.getLogger("waitress.queue")
        waitress.propagate = False
        for name, server in (("no-op Bolt", base), ("vmbot", ours)):
            url = f"http://127.0.0.1:{server.effective_port}/slack/events"
            measure(url, fake, 20, args.concurrency)  # warm up
            counter = Queued()
            waitress.addHandler(counter)
            results[name] = measure(url, fake, args.n, args.concurrency)
            waitress.removeHandler(counter)
            queued[name] = counter.count
        print(f"{args.n} slash commands, {args.concurrency} in flight, waitress on 127.0.0.1")
        for name, xs in results.items():
            print(f"  {name:<11} p50 {pct(xs, 50):6.1f} ms   p99 {pct(xs, 99):6.1f} ms   queued {queued[name]}")
        ratio = pct(results["vmbot"], 99) / pct(results["no-op Bolt"], 99)
        print(f"  vmbot p99 / no-op p99 = {ratio:.2f}x  (target: <= 1.5x, no request queued for a thread)")
        adapter.close()
        bot.close()


if __name__ == "__main__":
    main()
