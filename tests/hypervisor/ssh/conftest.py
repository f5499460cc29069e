"""The ssh tier: the bot as its own Unix user, reaching libvirtd over qemu+ssh (scripts/ssh-rig-setup.sh).

The rig is the deployment of README step 4 on loopback: an sshd of its own on
127.0.0.1-3:PORT, key-only, the `vmbot` user allowed only virt-ssh-helper;
the bot runs as `vmbot-bot` with its key and a root-owned known_hosts that
pins 127.0.0.1 (the real key), 127.0.0.2 (another key: a CHANGED host key)
and not 127.0.0.3 (an UNKNOWN host key). All three reach the same libvirtd,
so a refusal there is the host key check and nothing else.

The bot runs in a child process (`vmbot exec`, `vmbot run`) under setpriv as
vmbot-bot: the OpenSSH client reads the known_hosts of the user it runs as,
so an in-process bot (root here) would prove nothing about the pins.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

SSH_ENV = (
    "VMBOT_SSH_URI",
    "VMBOT_SSH_CHANGED_URI",
    "VMBOT_SSH_UNKNOWN_URI",
    "VMBOT_SSH_BOT_USER",
    "VMBOT_SSH_RIG",
    "VMBOT_SSH_VMBOT",
    "VMBOT_SSH_FINGERPRINT",
)
SSH_HINT = 'run: eval "$(scripts/ssh-rig-setup.sh)" && export ' + " ".join(SSH_ENV) + " (scripts/test does this)"
SSH_HOST = "kvm-ssh"  # the bot's name for the rig's host
BOT_ID = "U0SSHBOT"  # the Slack ID [terminal] maps vmbot-bot to
POLICY = f"""\
roles:
  operator: [list, state, info, hosts, audit, start, shutdown, suspend, resume]
grants:
  - who: [{BOT_ID}, U0ALICE]
    role: operator
"""


@dataclass(frozen=True)
class Rig:
    uri: str
    changed_uri: str
    unknown_uri: str
    user: str
    dir: Path
    vmbot: str
    fingerprint: str

    def uri_to(self, port: int) -> str:
        """The rig's URI with another port on 127.0.0.1: same user, key file and parameters."""
        parts = urlsplit(self.uri)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))

    def sshd_pid(self) -> int:
        return int((self.dir / "sshd.pid").read_text().strip())


@pytest.fixture(scope="session")
def rig() -> Rig:
    """The setup script's answers; a clear failure (never a skip) when they are missing."""
    missing = [k for k in SSH_ENV if not os.environ.get(k)]
    if missing:
        pytest.fail(f"the ssh tier needs {', '.join(missing)}; {SSH_HINT}", pytrace=False)
    e = os.environ
    rig = Rig(
        e["VMBOT_SSH_URI"],
        e["VMBOT_SSH_CHANGED_URI"],
        e["VMBOT_SSH_UNKNOWN_URI"],
        e["VMBOT_SSH_BOT_USER"],
        Path(e["VMBOT_SSH_RIG"]),
        e["VMBOT_SSH_VMBOT"],
        e["VMBOT_SSH_FINGERPRINT"],
    )
    try:
        os.kill(rig.sshd_pid(), 0)
    except (OSError, ValueError):
        pytest.fail(f"the rig's sshd is not running ({rig.dir}/sshd.pid); {SSH_HINT}", pytrace=False)
    return rig


def as_bot_user(rig: Rig) -> list[str]:
    """The prefix that runs a command as the bot's unprivileged user (setpriv execs: no extra process)."""
    return ["setpriv", f"--reuid={rig.user}", f"--regid={rig.user}", "--init-groups", "--"]


@dataclass
class BotHome:
    """A directory only vmbot-bot may enter: its config, policy and sqlite store."""

    rig: Rig
    path: Path

    def config(self, hosts: dict[str, str], host_timeout: float = 10.0, probe_interval: float = 60.0) -> Path:
        """Write vmbot.toml (values JSON-quoted: a valid TOML basic string) and return its path."""
        lines = ["[hosts]", *(f"{name} = {json.dumps(uri)}" for name, uri in hosts.items())]
        lines += ["[store]", 'path = "vmbot.db"', "[policy]", 'file = "policy.yml"']
        lines += ["[terminal]", f"users = {{ {self.rig.user} = {json.dumps(BOT_ID)} }}"]
        lines += ["[limits]", f"host_timeout = {host_timeout}", f"probe_interval = {probe_interval}"]
        return self.write("vmbot.toml", "\n".join(lines) + "\n")

    def write(self, name: str, text: str) -> Path:
        path = self.path / name
        path.write_text(text)
        shutil.chown(path, self.rig.user, self.rig.user)
        path.chmod(0o600)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing of the test process (no VMBOT_CONFIG, no tokens) leaks in."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.rig.dir / "bot"), "LANG": "C.UTF-8", **extra}

    def exec(self, text: str, config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``vmbot exec --config CONFIG -- TEXT`` as vmbot-bot."""
        cmd = [*as_bot_user(self.rig), self.rig.vmbot, "exec", "--config", str(config), "--", text]
        return subprocess.run(
            cmd, cwd=self.path, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture
def bot_home(rig: Rig) -> Iterator[BotHome]:
    path = rig.dir / "runs" / f"t-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    shutil.chown(path, rig.user, rig.user)
    home = BotHome(rig, path)
    home.write("policy.yml", POLICY)
    try:
        yield home
    finally:
        shutil.rmtree(path, ignore_errors=True)
