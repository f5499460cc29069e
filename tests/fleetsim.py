"""A simulated fleet of many hosts: test-driver fleet files, a silent host, `vmbot run` and `vmbot exec`.

Shared by tests/test_thousand_hosts.py (CI-sized) and bench/thousand_hosts.py (1,000 x 100),
so both exercise the same thing: the real CLI, the real Bolt app over HTTP with
signed requests, the fake Slack Web API, and libvirt's test driver per host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from handlers.terminal.identity import unix_user
from tests import slacksign
from tests.conftest import Vm, fleet_xml, vmbot_exe
from tests.fakehosts import closed_port, silent_listener
from tests.slackfake import Call, FakeSlack
from tests.slackrig import SECRET

STATES = ["running"] * 7 + ["shut off", "paused", "running"]
USER = "U0ALICE"


def vm_name(host: int, i: int) -> str:
    return f"vm-{host:04d}-{i:03d}"


def write_hosts(directory: Path, hosts: int, per_host: int) -> dict[str, str]:
    """``h0000``.. as test:///abs/path.xml files; files already there are reused (the bench's cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    uris = {}
    for h in range(hosts):
        path = directory / f"h{h:04d}.xml"
        if not path.exists():
            vms = [Vm(vm_name(h, i), STATES[i % len(STATES)]) for i in range(per_host)]
            tmp = path.with_suffix(".tmp")
            ET.ElementTree(fleet_xml(vms)).write(tmp, encoding="unicode", xml_declaration=True)
            tmp.rename(path)
        uris[f"h{h:04d}"] = f"test://{path.resolve()}"
    return uris


def write_config(directory: Path, hosts: dict[str, str], host_timeout: float = 5.0) -> Path:
    """A real config (not the demo): the hosts, a store, a policy granting USER everything, the terminal user."""
    policy = directory / "policy.yml"
    policy.write_text(f"roles:\n  admin: ['*']\ngrants:\n  - who: [{USER}]\n    role: admin\n")
    lines = ["[hosts]"] + [f"{json.dumps(name)} = {json.dumps(uri)}" for name, uri in hosts.items()]
    lines += ["", "[store]", f"path = {json.dumps(str(directory / 'vmbot.db'))}"]
    lines += ["", "[policy]", f"file = {json.dumps(str(policy))}"]
    lines += ["", "[terminal]", f"users = {{ {json.dumps(unix_user())} = {json.dumps(USER)} }}"]
    lines += ["", "[limits]", f"host_timeout = {host_timeout}", "probe_interval = 600"]
    config = directory / "vmbot.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@contextmanager
def silent_host() -> Iterator[str]:
    """A qemu+tcp URI whose listener accepts and never answers (a wedged libvirtd)."""
    listener, held = silent_listener()
    try:
        yield f"qemu+tcp://127.0.0.1:{listener.getsockname()[1]}/system"
    finally:
        listener.close()
        for conn in held:
            conn.close()


@dataclass
class RunningBot:
    proc: subprocess.Popen
    fake: FakeSlack
    url: str
    config: Path

    def slash(self, text: str, name: str) -> None:
        body = slacksign.slash_body(text, user_id=USER, response_url=self.fake.response_url(name))
        status, said = slacksign.post(self.url, body, slacksign.signed_headers(SECRET, body))
        assert status == 200, (status, said)

    def answer(self, text: str, name: str, timeout: float = 120.0) -> tuple[Call, float]:
        """Send a slash command; the first post to its response_url, and how long it took."""
        since, started = self.fake.mark(), time.monotonic()
        self.slash(text, name)
        call = self.fake.wait_for(f"response_url:{name}", timeout=timeout, since=since)
        return call, time.monotonic() - started

    def hwm_mib(self) -> float:
        """Peak resident memory of the bot process (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


@contextmanager
def running_bot(config: Path) -> Iterator[RunningBot]:
    """`vmbot run --http` on the config, its Web API pointed at a local fake Slack."""
    with FakeSlack() as fake:
        port = closed_port()
        env = {**os.environ, "SLACK_BOT_TOKEN": fake.token, "SLACK_SIGNING_SECRET": SECRET}
        env["SLACK_API_URL"] = fake.base_url
        env.pop("SLACK_APP_TOKEN", None)
        cmd = [vmbot_exe(), "run", "--config", str(config), "--http", str(port), "--metrics-port", str(closed_port())]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(50):
                line = proc.stderr.readline()  # type: ignore[union-attr]
                if "serving POST /slack/events" in line or not line:
                    break
            yield RunningBot(proc, fake, f"http://127.0.0.1:{port}/slack/events", config)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            proc.stderr.close()  # type: ignore[union-attr]


def vmbot_exec(config: Path, text: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(config), "--", text], capture_output=True, text=True, timeout=600
    )
    return done, time.monotonic() - started


def wait_kept(config: Path, timeout: float = 300.0) -> float:
    """Until `vmbot exec -- list` says it answered from the inventory the running bot keeps; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        done, _ = vmbot_exec(config, "list --host h0000")
        if "from the inventory kept by the bot" in done.stdout:
            return time.monotonic() - started
        time.sleep(0.5)  # polling a real condition: the bot's first resync reaching the store
    raise AssertionError("the running bot never kept an inventory")
