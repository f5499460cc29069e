"""Ack latency of /vm over HTTP: `vmbot run --http` vs a no-op Bolt app, same server, same run.

Each app under test runs in a process of its own, as in production: vmbot as
`vmbot run --http` on a real config (the demo fleet through libvirt's test
driver, a store file, a policy), the baseline as a Bolt app whose listener only
acks, served by the same waitress setup (handlers.slack.server.serve). The fake
Slack Web API runs in a third process and the load generator in this one, so
neither's CPU time is charged to the app measured. N signed slash commands, C in
flight at a time; prints p50 and p99 of the time until the HTTP answer (the ack
Slack waits for) and how many requests waitress queued for a thread.

    .venv/bin/python bench/ack_latency.py [--n 200] [--concurrency 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import slacksign  # noqa: E402

SECRET = "bench-secret"
TOKEN = "xoxb-test-token"
USER = "U0ALICE"
COMMANDS = ["list --all", "state centos7", "info ubuntu20", "suspend web-server", "resume web-server"]
VMBOT = str(Path(sys.executable).parent / "vmbot")


def measure(url: str, fake_port: int, n: int, concurrency: int) -> list[float]:
    def one(i: int) -> float:
        response_url = f"http://127.0.0.1:{fake_port}/response/b{i}"
        body = slacksign.slash_body(COMMANDS[i % len(COMMANDS)], user_id=USER, response_url=response_url)
        headers = slacksign.signed_headers(SECRET, body)
        started = time.perf_counter()
        status, _ = slacksign.post(url, body, headers)
        assert status == 200, status
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(one, range(n)))


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] * 1000


# -- the child processes --------------------------------------------------------


def serve_fake() -> None:
    """The fake Slack Web API: prints its port, serves until stdin closes."""
    from tests.slackfake import FakeSlack

    with FakeSlack(token=TOKEN) as fake:
        print(fake.port, flush=True)
        sys.stdin.read()


def serve_noop(port: int) -> None:
    """The baseline: Bolt with a listener that only acks, on vmbot's waitress setup; until SIGTERM."""
    import logging

    from slack_bolt import App
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from slack_sdk import WebClient

    from handlers.slack.server import serve, stop_server

    logging.basicConfig(level=logging.WARNING)
    client = WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    app = App(client=client, signing_secret=os.environ["SLACK_SIGNING_SECRET"])
    app.command("/vm")(lambda ack: ack())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = serve(SlackRequestHandler(app), port)
    print(f"no-op: serving POST /slack/events on 127.0.0.1:{server.effective_port}", file=sys.stderr, flush=True)
    stop.wait()
    stop_server(server)


def write_config(directory: Path) -> Path:
    """A production-shaped config: the demo hosts as test-driver files, a store file, a policy for USER."""
    policy = directory / "policy.yml"
    policy.write_text(f"roles:\n  admin: ['*']\ngrants:\n  - who: [{USER}]\n    role: admin\n")
    hosts = {p.stem: f"test://{p}" for p in sorted((ROOT / "bot" / "demo").glob("*.xml"))}
    lines = ["[hosts]"] + [f"{json.dumps(name)} = {json.dumps(uri)}" for name, uri in hosts.items()]
    lines += ["[store]", f"path = {json.dumps(str(directory / 'vmbot.db'))}"]
    lines += ["[policy]", f"file = {json.dumps(str(policy))}"]
    config = directory / "vmbot.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


class Served:
    """An app under test in its own process; counts waitress's "Task queue depth" lines on its stderr."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        self.queued, self.lines = 0, []
        for _ in range(50):
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            self.lines.append(line)
            if "serving POST /slack/events" in line or not line:
                break
        else:
            raise RuntimeError("the app under test never said it was serving")
        if not line:
            raise RuntimeError("the app under test ended: " + "".join(self.lines[-5:]))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.queued += "Task queue depth" in line
            self.lines.append(line)

    def cpu(self) -> float:
        """CPU seconds the process has used (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, timeout: float = 60.0) -> None:
        """Until the work after the acks is done (no CPU used for 0.3 s): its cost is counted, once."""
        deadline, last = time.monotonic() + timeout, -1.0
        while time.monotonic() < deadline and (now := self.cpu()) != last:
            last = now
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(name: str, cmd: list[str], env: dict[str, str], fake_port: int, args: argparse.Namespace) -> tuple:
    port = free_port()
    served = Served([*cmd, "--http", str(port)] if name == "vmbot" else [*cmd, str(port)], env)
    try:
        url = f"http://127.0.0.1:{port}/slack/events"
        measure(url, fake_port, 20, args.concurrency)  # warm up
        served.settle()  # the warm-up's work after the ack is done before the timed run
        before, cpu = served.queued, served.cpu()
        xs = measure(url, fake_port, args.n, args.concurrency)
        served.settle()
        return xs, served.queued - before, served.cpu() - cpu
    finally:
        served.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="measure both apps this many times, alternating")
    ap.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        return serve_fake()
    if args.serve_noop is not None:
        return serve_noop(args.serve_noop)
    fake = subprocess.Popen([sys.executable, __file__, "--serve-fake"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    fake_port = int(fake.stdout.readline())  # type: ignore[union-attr]
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET}
    env["SLACK_API_URL"] = f"http://127.0.0.1:{fake_port}/api/"
    env.pop("SLACK_APP_TOKEN", None)
    env.pop("VMBOT_CONFIG", None)
    results: dict[str, list[float]] = {"no-op Bolt": [], "vmbot": []}
    queued = {"no-op Bolt": 0, "vmbot": 0}
    cpu = {"no-op Bolt": 0.0, "vmbot": 0.0}
    try:
        with tempfile.TemporaryDirectory(prefix="vmbot-ack-") as tmp:
            config = write_config(Path(tmp))
            apps = {
                "no-op Bolt": [sys.executable, __file__, "--serve-noop"],
                "vmbot": [VMBOT, "run", "--config", str(config), "--no-metrics"],
            }
            for _ in range(args.rounds):
                for name, cmd in apps.items():
                    xs, q, used = run_app(name, cmd, env, fake_port, args)
                    results[name] += xs
                    queued[name] += q
                    cpu[name] += used
    finally:
        fake.stdin.close()  # type: ignore[union-attr]
        fake.wait(timeout=30)
    load = os.getloadavg()[0]
    print(
        f"{args.n * args.rounds} slash commands, {args.concurrency} in flight, waitress on 127.0.0.1; "
        f"each app in its own process, the fake Slack and the load in others (load avg {load:.2f})"
    )
    for name, xs in results.items():
        print(f"  {name:<11} p50 {pct(xs, 50):6.1f} ms   p99 {pct(xs, 99):6.1f} ms   queued {queued[name]}"
              f"   CPU {cpu[name] / len(xs) * 1000:5.1f} ms/command")  # fmt: skip
    ratio = pct(results["vmbot"], 99) / pct(results["no-op Bolt"], 99)
    print(f"  vmbot p99 / no-op p99 = {ratio:.2f}x  (target: <= 1.5x, no request queued for a thread)")


if __name__ == "__main__":
    main()
