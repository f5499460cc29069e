"""`vmbot exec` as vmbot-bot over qemu+ssh: a lifecycle round trip, pinned host keys, a silent sshd."""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import time

import libvirt

from tests.fakehosts import silent_listener
from tests.hypervisor.conftest import Guest
from tests.hypervisor.ssh.conftest import SSH_HOST, BotHome, as_bot_user

SINCE = r"unreachable since \d\d:\d\d UTC"


def test_lifecycle_round_trip_over_ssh_as_the_bot_user(bot_home: BotHome, acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    config = bot_home.config({SSH_HOST: bot_home.rig.uri})
    target = f"{SSH_HOST}/{acpi_guest.name}"

    def vm(text: str) -> str:
        done = bot_home.exec(text, config)
        assert done.returncode == 0, f"{text}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr
        return done.stdout

    assert vm(f"state {target}").startswith(f"{acpi_guest.name} on {SSH_HOST}: running")
    assert vm(f"suspend {target}").startswith(f"{target}: paused")
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_PAUSED  # libvirtd itself says so, not the bot
    assert vm(f"state {target}").startswith(f"{acpi_guest.name} on {SSH_HOST}: paused")
    assert vm(f"resume {target}").startswith(f"{target}: resumed")
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert "shut off after" in vm(f"shutdown {target} --timeout 30")
    assert not acpi_guest.dom().isActive()
    assert vm(f"start {target}").startswith(f"{target}: started")
    assert acpi_guest.dom().isActive()

    store = bot_home.path / "vmbot.db"
    assert store.stat().st_uid == bot_home.path.stat().st_uid and store.stat().st_mode & 0o777 == 0o600
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT unix_user, host, action, result FROM operations ORDER BY id").fetchall()
    finally:
        db.close()
    assert {r[0] for r in rows} == {bot_home.rig.user}  # the bot ran as its own Unix user
    assert [(r[2], r[3]) for r in rows if r[2] in ("suspend", "resume", "start")] == [
        ("suspend", "ok"),
        ("resume", "ok"),
        ("start", "ok"),
    ]


def _hosts_of(bot_home: BotHome, config_hosts: dict[str, str]) -> tuple[str, str]:
    done = bot_home.exec("hosts", bot_home.config(config_hosts))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return done.stdout, done.stderr


def test_changed_and_unknown_host_keys_are_refused_with_the_line_to_act_on(
    bot_home: BotHome, acpi_guest: Guest
) -> None:
    rig = bot_home.rig
    acpi_guest.ensure_running()
    # three names for one libvirtd: only the host key differs
    config = bot_home.config({SSH_HOST: rig.uri, "changed": rig.changed_uri, "unknown": rig.unknown_uri})

    changed = bot_home.exec(f"suspend changed/{acpi_guest.name}", config)
    unknown = bot_home.exec(f"suspend unknown/{acpi_guest.name}", config)

    for done in (changed, unknown):
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stdout.count("\n") == 1, done.stdout  # one line
    assert re.fullmatch(
        rf"changed: {SINCE} \(host key of 127\.0\.0\.2:\d+ has CHANGED: it shows {re.escape(rig.fingerprint)}, "
        rf"{re.escape(str(rig.dir))}/bot/\.ssh/known_hosts:2 pins another: refused\. Check the fingerprint .*\)\n",
        changed.stdout,
    )
    assert re.fullmatch(
        rf"unknown: {SINCE} \(host key of 127\.0\.0\.3:\d+ is unknown \(not in the bot user's known_hosts\): "
        r"refused\. .*\)\n",
        unknown.stdout,
    )
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_RUNNING  # nothing ran

    hosts, _ = _hosts_of(bot_home, {SSH_HOST: rig.uri, "changed": rig.changed_uri, "unknown": rig.unknown_uri})
    lines = hosts.splitlines()
    assert lines[0] == "3 host(s)"
    assert lines[1].startswith(f"{SSH_HOST} (ssh): up, libvirt ")
    assert re.fullmatch(rf"changed \(ssh\): {SINCE} \(host key of 127\.0\.0\.2:\d+ has CHANGED: .*\)", lines[2])
    assert re.fullmatch(rf"unknown \(ssh\): {SINCE} \(host key of 127\.0\.0\.3:\d+ is unknown .*\)", lines[3])


def test_only_the_host_key_check_stands_between_the_bot_and_the_changed_host(bot_home: BotHome) -> None:
    """The control: with checking off (what no_verify=1 does), the 'changed' address logs in fine.

    So the refusal above is the pin at work; and vmbot refuses a config that turns it off.
    """
    rig = bot_home.rig
    unchecked = f"{rig.changed_uri}&no_verify=1"
    virsh = subprocess.run(
        [*as_bot_user(rig), "virsh", "-c", unchecked, "hostname"],
        cwd="/",
        env=bot_home.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert virsh.returncode == 0, virsh.stderr  # OpenSSH with StrictHostKeyChecking=no logs in past a changed key
    assert virsh.stdout.strip() == socket.gethostname()  # the libvirtd on this machine, the pinned name's

    done = bot_home.exec("hosts", bot_home.config({"changed": unchecked}))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().endswith(
        "[hosts] changed: no_verify=1 turns off the host key check; vmbot refuses it (pin the key instead)"
    )
    assert done.stderr.count("\n") == 1


def test_known_hosts_is_not_read_by_the_ssh_transport(bot_home: BotHome) -> None:
    """A known_hosts= file that pins the unknown address correctly changes nothing for qemu+ssh://."""
    rig = bot_home.rig
    pins = bot_home.write("pins", (rig.dir / "bot/.ssh/known_hosts").read_text().replace("[127.0.0.1]", "[127.0.0.3]"))
    virsh = subprocess.run(
        [*as_bot_user(rig), "virsh", "-c", f"{rig.unknown_uri}&known_hosts={pins}&known_hosts_verify=normal", "uri"],
        cwd="/",
        env=bot_home.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert virsh.returncode != 0 and "Host key verification failed" in virsh.stderr

    done = bot_home.exec("hosts", bot_home.config({"pinned": f"{rig.unknown_uri}&known_hosts={pins}"}))
    assert done.returncode == 2
    assert "known_hosts= is not read by the ssh transport" in done.stderr and "qemu+libssh://" in done.stderr


def test_a_silent_sshd_is_isolated_by_the_host_timeout(bot_home: BotHome, acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    listener, held = silent_listener()  # accepts TCP and never sends an ssh banner
    try:
        port = listener.getsockname()[1]
        config = bot_home.config({SSH_HOST: bot_home.rig.uri, "stuck": bot_home.rig.uri_to(port)}, host_timeout=3)
        started = time.monotonic()
        done = bot_home.exec("list --all", config)
        took = time.monotonic() - started
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 3 + 8, f"vmbot exec took {took:.1f}s"  # the deadline plus process start and one ssh login
    assert held, "the silent sshd was never even asked"
    first = done.stdout.splitlines()[0]
    assert re.fullmatch(r"\d+ VMs? on 1 host\(s\); 1 host\(s\) did not answer", first), done.stdout
    assert acpi_guest.name in done.stdout  # the ssh host answered in the meantime
    assert re.search(rf"^stuck: {SINCE} \(no answer within 3s\)$", done.stdout, re.M), done.stdout


def _ssh(bot_home: BotHome, *args: str) -> subprocess.CompletedProcess[str]:
    """The OpenSSH client as vmbot-bot, straight at the rig's sshd (port from the rig's URI)."""
    rig = bot_home.rig
    port = rig.uri.split("@127.0.0.1:", 1)[1].split("/", 1)[0]
    cmd = [*as_bot_user(rig), "ssh", "-p", port, "-o", "BatchMode=yes", *args]
    return subprocess.run(
        cmd, cwd="/", env=bot_home.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )


def test_the_vmbot_user_gets_virt_ssh_helper_and_nothing_else(bot_home: BotHome) -> None:
    key = str(bot_home.rig.dir / "bot/.ssh/id_ed25519")
    shell = _ssh(bot_home, "-i", key, "vmbot@127.0.0.1", "id; cat /etc/passwd")
    assert "uid=" not in shell.stdout and "root:" not in shell.stdout  # ForceCommand: the command is ignored
    assert "virt-ssh-helper" in shell.stderr  # what ran instead, and found no libvirt client on stdin
    forward = _ssh(bot_home, "-i", key, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", "vmbot@127.0.0.1")
    assert forward.returncode == 255 and "remote port forwarding failed" in forward.stderr
    no_key = _ssh(bot_home, "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=yes", "vmbot@127.0.0.1")
    assert no_key.returncode == 255 and "Permission denied (publickey)" in no_key.stderr
    root = _ssh(bot_home, "-i", key, "root@127.0.0.1", "id")
    assert root.returncode == 255 and "Permission denied" in root.stderr
