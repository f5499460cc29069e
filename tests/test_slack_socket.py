"""What only Socket Mode has: envelopes, redelivery, disconnects, and `vmbot run` over a socket.

The scenarios both transports share run over both in test_slack_e2e.py and
test_slack_approvals.py; this file covers the websocket's own behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from bot.service import Bot
from tests import slacksign
from tests.conftest import audit_rows, vmbot_exe
from tests.fakehosts import closed_port
from tests.slackfake import FakeSlack
from tests.slackrig import SlackRig, start_rig
from tests.socketfake import FakeSocketMode


@pytest.fixture
def rig(demo_bot: Bot) -> Iterator[SlackRig]:
    yield from start_rig(demo_bot, "socket")


def _slash(rig: SlackRig, text: str, name: str) -> dict:
    return slacksign.slash_fields(text, response_url=rig.fake.response_url(name))


def test_commands_in_a_row_are_each_answered(rig: SlackRig) -> None:
    """The defect: every command after the first looked like a replay and was dropped."""
    for text, said in [("state centos7", "shut off"), ("state ubuntu20", "running"), ("hosts", "2 host(s)")]:
        assert said in rig.answer(text).args["text"], text


def test_twenty_commands_in_one_second_get_twenty_answers(rig: SlackRig) -> None:
    assert rig.socket is not None
    vms = ["centos7", "ubuntu20", "kvm01/db-server", "kvm02/db-server"]
    sent = [rig.socket.send("slash_commands", _slash(rig, f"state {vms[i % 4]}", f"n{i}")) for i in range(20)]
    for envelope_id in sent:
        rig.socket.wait_ack(envelope_id)  # each within Slack's 3 s
    for i in range(20):
        answer = rig.fake.wait_for(f"response_url:n{i}", timeout=10)
        assert vms[i % 4].split("/")[-1] in answer.args["text"]
    assert len([r for r in audit_rows(rig.bot) if r["action"] == "state"]) == 20


def test_an_envelope_delivered_twice_acts_once(rig: SlackRig) -> None:
    assert rig.socket is not None
    payload = _slash(rig, "start centos7", "once")
    envelope_id = rig.socket.send("slash_commands", payload)
    rig.socket.wait_ack(envelope_id)
    rig.socket.send("slash_commands", payload, envelope_id=envelope_id)  # Slack's redelivery
    rig.fake.wait_for("chat.postMessage", lambda c: "started" in c.args["text"])
    rig.adapter.close()  # a barrier: every command that was let through has finished
    assert rig.socket.acked(envelope_id) == 2  # the repeat is acked too, so Slack stops sending it
    assert [r["action"] for r in audit_rows(rig.bot)].count("start") == 1
    assert len(rig.fake.calls("chat.postMessage")) == 1


def test_a_retried_event_runs_once_and_different_events_each_run(rig: SlackRig) -> None:
    assert rig.socket is not None
    event = slacksign.app_home_opened_event("U0ALICE")
    rig.socket.wait_ack(rig.socket.send("events_api", event))
    rig.socket.wait_ack(rig.socket.send("events_api", event, retry_attempt=1, retry_reason="timeout"))
    rig.home("U0BOB")  # a different event, after the retry
    for user in ("U0ALICE", "U0BOB"):
        rig.fake.wait_for("views.publish", lambda c, user=user: c.args["user_id"] == user)
    users = [c.args["user_id"] for c in rig.fake.calls("views.publish")]
    assert sorted(users) == ["U0ALICE", "U0BOB"]


@pytest.mark.parametrize("reason", ["refresh_requested", "warning"])
def test_disconnect_is_followed_by_a_reconnect_that_loses_no_command(rig: SlackRig, reason: str) -> None:
    assert rig.socket is not None
    assert "running" in rig.answer("state ubuntu20").args["text"]
    rig.socket.disconnect(reason)
    rig.socket.wait_connections(2)  # a new URL from apps.connections.open, a new socket
    assert len(rig.fake.calls("apps.connections.open")) == 2
    rig.socket.wait_closed(0)  # the old one is let go
    assert "shut off" in rig.answer("state centos7").args["text"]


def test_a_connection_slack_closes_is_reopened(rig: SlackRig) -> None:
    assert rig.socket is not None
    rig.socket.drop()
    rig.socket.wait_connections(2, timeout=15)  # noticed by the client's monitor, every 5 s
    assert "started" in rig.answer("start centos7").args["text"]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("slash_commands", {"command": "/vm", "text": "destroy ubuntu20"}),  # no user, no channel
        ("slash_commands", "destroy ubuntu20"),
        ("interactive", {"type": "block_actions", "actions": "nope"}),
        ("events_api", {"type": "event_callback", "event": {"type": "app_home_opened"}}),
        ("no_such_type", {"x": 1}),
    ],
)
def test_malformed_envelopes_change_nothing(rig: SlackRig, kind: str, payload: object) -> None:
    assert rig.socket is not None
    rig.socket.send(kind, payload)  # type: ignore[arg-type]
    assert "running" in rig.answer("state ubuntu20").args["text"]  # the bot still answers
    rig.adapter.close()
    assert [r["action"] for r in audit_rows(rig.bot)] == ["state"]
    assert rig.fake.calls("chat.postMessage") == [] and rig.fake.calls("views.publish") == []


def test_vmbot_run_over_socket_mode_answers_and_closes_on_sigterm() -> None:
    with FakeSlack() as fake, FakeSocketMode() as socket:
        fake.socket_url = socket.url
        env = {**os.environ, "SLACK_BOT_TOKEN": fake.token, "SLACK_APP_TOKEN": fake.app_token}
        env.update(SLACK_API_URL=fake.base_url)
        env.pop("SLACK_SIGNING_SECRET", None)  # Socket Mode needs no signing secret
        metrics = closed_port()
        cmd = [vmbot_exe(), "run", "--metrics-port", str(metrics)]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            socket.wait_connections(1, timeout=30)
            deadline = time.monotonic() + 10
            while (health := _get(metrics, "/healthz"))[0] != 200:  # served once the socket is open
                assert time.monotonic() < deadline, health
                time.sleep(0.05)
            assert json.loads(health[1])["ok"] is True
            for text in ["start centos7", "suspend centos7"]:
                since = fake.mark()
                fields = slacksign.slash_fields(text, user_id="U0DEMO")  # a demo user: the demo policy grants by ID
                socket.wait_ack(socket.send("slash_commands", fields))
                fake.wait_for("chat.postMessage", since=since, timeout=10)
            said = [c.args["text"] for c in fake.calls("chat.postMessage")]
            assert "started" in said[0] and "paused" in said[1], said
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            socket.wait_closed(0)
        finally:
            proc.kill()
            err = proc.stderr.read()
            proc.stderr.close()
    assert "connected to Slack over Socket Mode" in err
    assert "will be unused" not in err and "Traceback" not in err, err
    steps = [line.split("stopping: ", 1)[1] for line in err.splitlines() if line.startswith("vmbot: stopping: ")]
    assert steps == [
        "listener closed, no new commands",
        "scheduler and alerts stopped",
        "commands in flight answered",
        "housekeeping joined, scheduler lease released",
        "bot closed",
    ], err
    assert fake.token not in err and fake.app_token not in err


@pytest.mark.parametrize("fault", ["wrong app token", "nothing listens"])
def test_a_socket_that_cannot_open_is_one_line_and_exit_2(fault: str) -> None:
    with FakeSlack() as fake:
        fake.socket_url = lambda: f"ws://127.0.0.1:{closed_port()}/link/"
        app_token = "xapp-wrong" if fault == "wrong app token" else fake.app_token
        env = {**os.environ, "SLACK_BOT_TOKEN": fake.token, "SLACK_APP_TOKEN": app_token}
        env.update(SLACK_API_URL=fake.base_url)
        cmd = [vmbot_exe(), "run", "--metrics-port", str(closed_port())]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("vmbot:")]
    assert len(lines) == 1 and "Socket Mode" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and app_token not in done.stderr


# -- hostile review ------------------------------------------------------------------------


def _run_socket(fake: FakeSlack, socket: FakeSocketMode, metrics: int) -> subprocess.Popen:
    fake.socket_url = socket.url
    env = {**os.environ, "SLACK_BOT_TOKEN": fake.token, "SLACK_APP_TOKEN": fake.app_token}
    env.update(SLACK_API_URL=fake.base_url)
    env.pop("SLACK_SIGNING_SECRET", None)
    cmd = [vmbot_exe(), "run", "--metrics-port", str(metrics)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    socket.wait_connections(1, timeout=30)
    return proc


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # not listening yet
        return 0, str(e.reason)


def test_hostile_healthz_tells_when_slack_cannot_reach_the_bot() -> None:
    with FakeSlack() as fake, FakeSocketMode() as socket:
        metrics = closed_port()
        proc = _run_socket(fake, socket, metrics)
        try:
            fake.socket_url = None  # the app token was revoked: apps.connections.open says invalid_auth
            socket.drop()
            deadline = time.monotonic() + 20
            while len(fake.calls("apps.connections.open")) < 3:  # two reconnects tried and refused
                assert time.monotonic() < deadline, "no reconnect was tried"
                time.sleep(0.1)
            status, body = _get(metrics, "/healthz")
            assert status != 200 or json.loads(body)["ok"] is False, body  # deaf: no command can arrive
        finally:
            proc.kill()
            proc.wait(10)


def test_hostile_ack_latency_is_measured_over_socket_mode() -> None:
    with FakeSlack() as fake, FakeSocketMode() as socket:
        metrics = closed_port()
        proc = _run_socket(fake, socket, metrics)
        try:
            fields = slacksign.slash_fields("state centos7", response_url=fake.response_url("m"))
            socket.wait_ack(socket.send("slash_commands", fields))
            fake.wait_for("response_url:m", timeout=10)
            _, text = _get(metrics, "/metrics")
            count = next(x for x in text.splitlines() if x.startswith("vmbot_ack_seconds_count"))
            assert float(count.split()[-1]) >= 1, count
        finally:
            proc.kill()
            proc.wait(10)
