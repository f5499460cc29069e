"""`vmbot run` as vmbot-bot, Slack over HTTP, a host over qemu+ssh: commands, and the ssh link killed under it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests import slacksign
from tests.fakehosts import closed_port
from tests.hypervisor.conftest import Guest, wait_for
from tests.hypervisor.ssh.conftest import SSH_HOST, BotHome, Rig, as_bot_user
from tests.slackfake import Call, FakeSlack
from tests.slackrig import SECRET


@dataclass
class RunningBot:
    proc: subprocess.Popen
    log: Path
    url: str
    fake: FakeSlack
    rig: Rig

    def answer(self, text: str) -> Call:
        """A signed slash command from U0ALICE in C0OPS; what the bot says back (channel or response_url)."""
        since = self.fake.mark()
        name = f"r{since}"
        body = slacksign.slash_body(
            text, user_id="U0ALICE", channel_id="C0OPS", response_url=self.fake.response_url(name)
        )
        status, _ = slacksign.post(self.url, body, slacksign.signed_headers(SECRET, body))
        assert status == 200
        replies = (f"response_url:{name}", "chat.postMessage")
        return self.fake.wait_call(lambda c: c.method in replies, 30, since)

    def ssh_clients(self) -> list[int]:
        """The OpenSSH clients libvirt started for the bot: one per open qemu+ssh connection."""
        found = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "ssh"], capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()]


@pytest.fixture
def running_bot(bot_home: BotHome, tmp_path: Path) -> Iterator[RunningBot]:
    rig = bot_home.rig
    with FakeSlack() as fake:
        http = closed_port()
        config = bot_home.config({SSH_HOST: rig.uri})
        env = bot_home.env(SLACK_BOT_TOKEN=fake.token, SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=fake.base_url)
        cmd = [*as_bot_user(rig), rig.vmbot, "run", "--config", str(config), "--http", str(http)]
        log = tmp_path / "bot.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [*cmd, "--metrics-port", str(closed_port())], cwd=bot_home.path, env=env, stderr=err
            )
        try:
            wait_for(
                lambda: "serving POST /slack/events" in log.read_text() or proc.poll() is not None, 30, "vmbot run"
            )
            assert proc.poll() is None, log.read_text()
            yield RunningBot(proc, log, f"http://127.0.0.1:{http}/slack/events", fake, rig)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert "Traceback" not in log.read_text()


def sshd_sessions_of(client: int, port: int) -> set[int]:
    """The rig's sshd processes serving this ssh client: match the client's local port to the server's peer."""
    mine = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    local = [
        m.group(1) for line in mine.splitlines() if f"pid={client}," in line if (m := re.search(r":(\d+)\s", line))
    ]
    assert local, f"ssh client {client} has no connection to port {port}: {mine}"
    theirs = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} and dport = :{local[0]} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(p) for p in re.findall(r'"sshd",pid=(\d+)', theirs)}


def test_slack_commands_over_ssh_and_the_next_one_after_the_sshd_child_is_killed(
    running_bot: RunningBot, acpi_guest: Guest
) -> None:
    acpi_guest.ensure_running()
    target = f"{SSH_HOST}/{acpi_guest.name}"

    first = running_bot.answer(f"state {target}")
    assert first.method.startswith("response_url:") and f"{acpi_guest.name} on {SSH_HOST}: running" in str(first.args)
    (client,) = running_bot.ssh_clients()  # one connection, held by the pool
    port = int(re.search(r":(\d+)/", running_bot.rig.uri).group(1))  # type: ignore[union-attr]
    sessions = sshd_sessions_of(client, port)
    assert sessions and running_bot.rig.sshd_pid() not in sessions  # its session, never the listening sshd

    for pid in sessions:
        os.kill(pid, signal.SIGTERM)  # the hypervisor side drops the link (sshd restarted, host rebooting, ...)
    wait_for(lambda: not Path(f"/proc/{client}").exists(), 10, "the bot's ssh client to see the link go")

    paused = running_bot.answer(f"suspend {target}")  # the very next command
    assert paused.method == "chat.postMessage" and paused.args["channel"] == "C0OPS"
    assert f"{target}: paused" in paused.args["text"], paused.args
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_PAUSED
    (again,) = running_bot.ssh_clients()
    assert again != client  # the pool opened a new connection

    resumed = running_bot.answer(f"resume {target}")
    assert f"{target}: resumed" in resumed.args["text"]
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_RUNNING
    hosts = running_bot.answer("hosts")
    assert f"{SSH_HOST} (ssh): up, libvirt " in str(hosts.args)
