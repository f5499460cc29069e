"""Benchmark: qemu+ssh through the bot's pool vs `virsh -c qemu+ssh://...` vs the local socket (issue 14).

All in one run, on the ssh rig (scripts/ssh-rig-setup.sh) and the local libvirtd:

- connect: a fresh ``libvirt.open`` + one answer (``getLibVersion``), over ssh
  (the OpenSSH handshake, a login, virt-ssh-helper) and over the local socket;
- ``state``: one round trip on an open pooled connection (``lookupByUUIDString``
  + ``state``), and the whole ``Bot.handle("state host/vm")`` path (parse,
  resolve, policy, audit row), over ssh and locally; vs ``virsh -c URI domstate``,
  a process and a connection per call, over ssh and locally.

The ssh side runs as the rig's bot user (vmbot-bot): OpenSSH checks that
user's pinned known_hosts. The domain is a defined, never started
``vmbot-b-ssh-<random>`` (state needs no guest), undefined at the end.

Run (as root): eval "$(scripts/hypervisor-setup.sh)"; eval "$(scripts/ssh-rig-setup.sh)";
    VMBOT_SSH_URI=... VMBOT_SSH_BOT_USER=... VMBOT_SSH_VMBOT=... .venv/bin/python bench/ssh_vs_virsh.py
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from bench.pool_vs_virsh import per_op as median  # noqa: E402
from bot.config import Config  # noqa: E402
from bot.hypervisor.pool import Pool  # noqa: E402
from bot.policy import AllowAll  # noqa: E402
from bot.service import Bot  # noqa: E402
from bot.store.audit import Actor, Audit  # noqa: E402

LOCAL = "qemu:///system"
VIRSH = shutil.which("virsh") or "/usr/bin/virsh"
ACTOR = Actor(user="U0BENCH", channel="", unix_user="bench", source="terminal")


def connect(uri: str) -> None:
    conn = libvirt.open(uri)
    conn.getLibVersion()
    conn.close()


def virsh_state(uri: str, name: str) -> None:
    subprocess.run([VIRSH, "-c", uri, "domstate", name], capture_output=True, check=True, timeout=60)


def measure(uri: str, name: str, store: str) -> dict[str, float]:
    """Every figure for one URI, in this process (the caller picks the Unix user)."""
    pool = Pool({"h": uri}, timeout=30)
    uuid = pool.call("h", lambda c: c.lookupByName(name).UUIDString())
    bot = Bot(Config(hosts={"h": uri}, host_timeout=30), AllowAll(), audit=Audit(store))
    try:
        assert bot.handle(f"state h/{name}", ACTOR).status.value == "ok"
        return {
            "connect": median(lambda: connect(uri), 10),
            "pool_state": median(lambda: pool.call("h", lambda c: c.lookupByUUIDString(uuid).state()), 200),
            "bot_state": median(lambda: bot.handle(f"state h/{name}", ACTOR), 100),
            "virsh_state": median(lambda: virsh_state(uri, name), 10),
        }
    finally:
        bot.close()
        pool.close()


def domain_xml(name: str) -> str:
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "32"
    ET.SubElement(dom, "vcpu").text = "1"
    ET.SubElement(ET.SubElement(dom, "os"), "type", arch="x86_64", machine="pc").text = "hvm"
    return ET.tostring(dom, encoding="unicode")


def ssh_side(uri: str, name: str) -> dict[str, float]:
    """Re-run this script as the rig's bot user, whose known_hosts pins the rig's host key."""
    user, vmbot = os.environ["VMBOT_SSH_BOT_USER"], os.environ["VMBOT_SSH_VMBOT"]
    python = str(Path(vmbot).parent / "python")
    cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", python, __file__, "--ssh", uri, name]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    done = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        sys.exit(f"ssh_vs_virsh: the ssh side failed as {user}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def report(ssh: dict[str, float], local: dict[str, float]) -> None:
    ms = lambda s: f"{s * 1e3:8.2f} ms"  # noqa: E731
    print("qemu+ssh (127.0.0.1, OpenSSH, virt-ssh-helper) vs the local socket; medians")
    print(
        f"  connect + first answer   ssh {ms(ssh['connect'])}   local {ms(local['connect'])}"
        f"   ssh costs {ssh['connect'] / local['connect']:.0f}x"
    )
    print(
        f"  state, pooled call       ssh {ms(ssh['pool_state'])}   local {ms(local['pool_state'])}"
        f"   ssh costs {ssh['pool_state'] / local['pool_state']:.1f}x"
    )
    print(f"  state, Bot.handle        ssh {ms(ssh['bot_state'])}   local {ms(local['bot_state'])}")
    print(f"  virsh domstate (a process per call)  ssh {ms(ssh['virsh_state'])}   local {ms(local['virsh_state'])}")
    print(f"  => over ssh, a pooled state is {ssh['virsh_state'] / ssh['pool_state']:.0f}x faster than virsh"
          f" (Bot.handle: {ssh['virsh_state'] / ssh['bot_state']:.0f}x); locally "
          f"{local['virsh_state'] / local['pool_state']:.0f}x")  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--ssh"]:
        uri, name = sys.argv[2], sys.argv[3]
        print(json.dumps(measure(uri, name, ":memory:")))
        return
    missing = [k for k in ("VMBOT_SSH_URI", "VMBOT_SSH_BOT_USER", "VMBOT_SSH_VMBOT") if not os.environ.get(k)]
    if missing:
        sys.exit(f'ssh_vs_virsh: set {", ".join(missing)}: eval "$(scripts/ssh-rig-setup.sh)" and export them')
    name = f"vmbot-b-ssh-{secrets.token_hex(3)}"
    conn = libvirt.open(LOCAL)
    conn.defineXML(domain_xml(name))
    try:
        ssh = ssh_side(os.environ["VMBOT_SSH_URI"], name)
        local = measure(LOCAL, name, ":memory:")
    finally:
        conn.lookupByName(name).undefine()
        conn.close()
    report(ssh, local)


if __name__ == "__main__":
    main()
