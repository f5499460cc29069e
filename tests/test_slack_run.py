"""`vmbot run` as a process: start-up checks, the HTTP endpoint, /healthz and /metrics."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import demo
from bot.policy import AllowAll
from handlers.slack.manifest import render
from handlers.slack.run import StartupError, api_url, run
from tests import slackschema, slacksign
from tests.conftest import vmbot_exe
from tests.fakehosts import closed_port
from tests.slackfake import FakeSlack
from tests.slackrig import SECRET

ROOT = Path(__file__).resolve().parents[1]


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"http": None, "socket": False, "metrics_port": 0, **kw})


@pytest.mark.parametrize(
    ("env", "kw", "said"),
    [
        ({}, {"http": 1}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, {"http": 1}, "SLACK_SIGNING_SECRET is not set"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"}, {}, "choose --http PORT"),
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, {"socket": True}, "--socket needs SLACK_APP_TOKEN"),
        ({"SLACK_BOT_TOKEN": "x", "SLACK_SIGNING_SECRET": "s", "SLACK_API_URL": "http://evil.example/"}, {"http": 1},
         "SLACK_API_URL must be https"),
    ],
)  # fmt: skip
def test_startup_problems_are_one_line(env, kw, said, capsys) -> None:
    assert run(demo(), lambda groups: AllowAll(), _args(**kw), env=env) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err
    assert "xoxb-1" not in err and 'SLACK_SIGNING_SECRET": "s' not in err  # secrets never reach the output


@pytest.mark.parametrize("url", ["https://slack.example/api", "http://127.0.0.1:9/api/", "http://localhost:1/api/"])
def test_api_url_allows_https_and_loopback(url: str) -> None:
    assert api_url(url).endswith("/api/")


@pytest.mark.parametrize("url", ["http://10.0.0.1/api/", "ftp://127.0.0.1/", "http://127.0.0.1.evil.example/"])
def test_api_url_refuses_the_rest(url: str) -> None:
    with pytest.raises(StartupError):
        api_url(url)


def test_manifest_is_generated_from_the_command_table() -> None:
    assert (ROOT / "manifest.yml").read_text() == render(), "run: python -m handlers.slack.manifest > manifest.yml"


def test_manifest_passes_slacks_schema() -> None:
    assert slackschema.manifest_errors((ROOT / "manifest.yml").read_text()) == []


def test_the_schema_checks_can_fail() -> None:
    """The checker is the project's own: prove it rejects what Slack rejects, or a pass means nothing."""
    broken = (ROOT / "manifest.yml").read_text().replace("display_information:", "display_info:", 1)
    assert any("display_information" in e for e in slackschema.manifest_errors(broken))
    assert slackschema.blocks_errors([{"type": "section", "text": {"type": "html", "text": "x"}}])
    assert slackschema.blocks_errors([{"type": "divider"}] * 51) == ["51 blocks; a message holds at most 50"]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[FakeSlack, int, int]]:
    with FakeSlack() as fake:
        http, metrics = closed_port(), closed_port()
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.base_url,
        }
        env.pop("SLACK_APP_TOKEN", None)
        cmd = [vmbot_exe(), "run", "--http", str(http), "--metrics-port", str(metrics)]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(20):  # Bolt may log first; the endpoint line comes once it listens
                if "serving POST /slack/events" in proc.stderr.readline():
                    break
            else:
                pytest.fail("vmbot run did not report its endpoint")
            yield fake, http, metrics
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            proc.stderr.close()


def test_run_serves_slack_health_and_metrics(served) -> None:
    fake, http, metrics = served
    body = slacksign.slash_body("start centos7", user_id="U0DEMO", response_url=fake.response_url("r"))  # a demo user
    started = time.monotonic()
    status, _ = slacksign.post(f"http://127.0.0.1:{http}/slack/events", body, slacksign.signed_headers(SECRET, body))
    assert status == 200 and time.monotonic() - started < 3
    assert "started" in fake.wait_for("chat.postMessage").args["text"]
    assert slacksign.post(f"http://127.0.0.1:{http}/slack/events", body, {})[0] == 401
    code, health = _get(f"http://127.0.0.1:{metrics}/healthz")
    assert code == 200 and '"ok": true' in health
    _, text = _get(f"http://127.0.0.1:{metrics}/metrics")
    assert 'vmbot_commands_total{action="start",result="ok"} 1.0' in text
    assert "vmbot_ack_seconds_count" in text and 'vmbot_host_up{host="kvm01"} 1.0' in text
    assert 'vmbot_libvirt_call_seconds_count{host="kvm01"}' in text
    assert "vmbot_open_connections 2.0" in text  # both demo hosts, under the default open_hosts
    assert fake.token not in text and SECRET not in text


def test_run_with_a_real_config_takes_the_lease_and_reloads_on_sighup(tmp_path: Path) -> None:
    import signal
    import sqlite3

    from tests.policyrig import POLICY

    (tmp_path / "policy.yml").write_text(POLICY)
    fleet = ROOT / "bot" / "demo" / "kvm01.xml"
    (tmp_path / "vmbot.toml").write_text(
        f'[hosts]\nkvm01 = "test://{fleet}"\n[store]\npath = "vmbot.db"\n[policy]\nfile = "policy.yml"\n'
    )
    with FakeSlack() as fake:
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.base_url,
        }
        env.pop("SLACK_APP_TOKEN", None)
        cmd = [vmbot_exe(), "run", "--config", str(tmp_path / "vmbot.toml"), "--http", str(closed_port())]
        proc = subprocess.Popen(
            [*cmd, "--metrics-port", str(closed_port())], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            for _ in range(20):
                if "serving POST /slack/events" in proc.stderr.readline():
                    break
            db = sqlite3.connect(tmp_path / "vmbot.db")
            deadline = time.monotonic() + 10
            while not db.execute("SELECT pid FROM leases WHERE name = 'scheduler'").fetchall():
                assert time.monotonic() < deadline, "the running bot never took the scheduler lease"
                time.sleep(0.05)
            assert db.execute("SELECT pid FROM leases").fetchone()[0] == proc.pid
            proc.send_signal(signal.SIGHUP)
            while not db.execute("SELECT detail FROM operations WHERE text = 'SIGHUP'").fetchall():
                assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
                time.sleep(0.05)
            (detail,) = db.execute("SELECT detail FROM operations WHERE text = 'SIGHUP'").fetchone()
            assert detail.startswith("policy reloaded from")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            proc.stderr.close()
        assert not db.execute("SELECT pid FROM leases").fetchall()  # released on the way out
        db.close()


def _run_env(fake: FakeSlack) -> dict[str, str]:
    env = {**os.environ, "SLACK_BOT_TOKEN": fake.token, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": fake.base_url}
    env.pop("SLACK_APP_TOKEN", None)
    return env


@pytest.mark.parametrize("which", ["--metrics-port", "--http"])
def test_a_busy_port_is_one_line_and_exit_2(which: str) -> None:
    """Defect 13: a port in use is not an OSError traceback."""
    with FakeSlack() as fake, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        ports = {"--http": str(closed_port()), "--metrics-port": str(closed_port()), which: busy}
        done = subprocess.run(
            [vmbot_exe(), "run", *(x for kv in ports.items() for x in kv)],
            env=_run_env(fake),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("vmbot:") and "serving" not in line]
    assert len(lines) == 1 and busy in lines[0] and "in use" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_no_metrics_turns_the_listener_off() -> None:
    with FakeSlack() as fake:
        http = closed_port()
        proc = subprocess.Popen(
            [vmbot_exe(), "run", "--http", str(http), "--no-metrics"],
            env=_run_env(fake),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(20):
                if "serving POST /slack/events" in proc.stderr.readline():  # type: ignore[union-attr]
                    break
            else:
                pytest.fail("vmbot run did not report its endpoint")
            mine = set(listening_ports(proc.pid))
            assert mine == {http}, mine
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            proc.stderr.close()  # type: ignore[union-attr]


def listening_ports(pid: int) -> list[int]:
    """The TCP ports a process listens on, read from /proc (no extra dependency)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                found.append(int(parts[1].split(":")[1], 16))
    return found
