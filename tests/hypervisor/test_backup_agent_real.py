"""Live disk backups of a guest with a QEMU guest agent: filesystems frozen just around the job's start.

The guest is scripts/guest-agent-image.sh's: qemu-ga on the virtio channel,
its disk (vda) mounted as ext4 on /data so there is a filesystem to freeze,
and an fsfreeze hook that prints ``VMBOT-GUEST-FSFREEZE freeze|thaw`` on the
serial console: the tests see each freeze and thaw the agent really did, in
order. The freeze state is read back from the agent (``guest-fsfreeze-status``,
through libvirt_qemu: tests only). Without an agent a backup is
crash-consistent: tests/hypervisor/test_backup_real.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from bot.backup import bootcheck, diskbackup, quiesce
from bot.hypervisor import xmlcheck
from bot.policy import AllowAll
from bot.reply import Reply, Status
from bot.service import Bot
from bot.store.audit import Actor, Audit
from tests.hypervisor.conftest import HOST, SERIAL_LOG_DIR, Env, Libvirt, guest_xml, volume_xml, wait_for
from tests.hypervisor.test_backup_real import backup_bot, upload_file

ME = Actor(user="U0HV", channel="C0HV", unix_user="tester", source="terminal")
AGENT_ENV = "VMBOT_GUEST_INITRD_AGENT"
HINT = f'run: eval "$(scripts/guest-agent-image.sh)" && export {AGENT_ENV} (scripts/test does this)'
HOOK = "VMBOT-GUEST-FSFREEZE "
READY = "VMBOT-GUEST-READY variant=agent data=/dev/vda agent=/dev/"


@dataclass
class AgentRig:
    bot: Bot
    lv: Libvirt
    hv: Env
    name: str
    serial_log: Path
    broken_pool: str  # a pool whose directory is gone: a push job into it cannot start

    def ask(self, text: str, bot: Bot | None = None) -> Reply:
        return (bot or self.bot).handle(text, ME)

    def dom(self) -> libvirt.virDomain:
        return self.lv.conn.lookupByName(self.name)

    def agent(self, command: str) -> object:
        """One agent command, as the guest answers it (tests only; the bot uses fsFreeze/fsThaw)."""
        answer = libvirt_qemu.qemuAgentCommand(self.dom(), json.dumps({"execute": command}), 10, 0)
        return json.loads(answer)["return"]

    def hooks(self) -> list[str]:
        """Every freeze and thaw the agent ran, in order (its hook prints one console line each)."""
        text = self.serial_log.read_text(errors="replace")
        return [line.split(HOOK, 1)[1].strip() for line in text.splitlines() if HOOK in line]

    def hooks_after(self, before: int, count: int) -> list[str]:
        wait_for(lambda: len(self.hooks()) >= before + count, 20, f"{count} fsfreeze hook lines")
        return self.hooks()[before:]


def _answers(rig: AgentRig) -> bool:
    try:
        return rig.agent("guest-ping") == {}
    except libvirt.libvirtError:
        return False


def agent_guest_xml(hv: Env, initrd: str, name: str, volume: str, serial_log: Path) -> str:
    """The tiny guest with the agent's initrd and channel (no path: libvirt picks the socket), no NIC."""
    root = ET.fromstring(guest_xml(dataclasses.replace(hv, initrd={"agent": initrd}), name, "agent", volume,
                                   serial_log, "console=ttyS0"))  # fmt: skip
    devices = root.find("devices")
    assert devices is not None
    for nic in devices.findall("interface"):
        devices.remove(nic)
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    return ET.tostring(root, encoding="unicode")


def broken_pool_xml(name: str, path: Path) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = str(path)
    return ET.tostring(pool, encoding="unicode")


@pytest.fixture(scope="module")
def rig(hv: Env, lv: Libvirt, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRig]:
    initrd = os.environ.get(AGENT_ENV, "")
    if not initrd or not Path(initrd).is_file():
        pytest.fail(f"the guest-agent tests need {AGENT_ENV} (an initrd file); {HINT}", pytrace=False)
    name = f"vmbot-t-ga-{secrets.token_hex(3)}"
    volume, log = f"{name}.qcow2", SERIAL_LOG_DIR / f"{name}-serial.log"
    tmp = tmp_path_factory.mktemp("ga")
    bot = backup_bot(hv, tmp)
    conn, broken = lv.conn, f"{name}-broken"
    try:
        vol = ET.fromstring(volume_xml(volume))
        ET.SubElement(vol.find("target"), "compat").text = "1.1"  # type: ignore[arg-type]  # qcow2 v3: bitmaps
        conn.storagePoolLookupByName(hv.pool).createXML(ET.tostring(vol, encoding="unicode"), 0)
        (tmp / "gone").mkdir()
        conn.storagePoolCreateXML(broken_pool_xml(broken, tmp / "gone"), 0)  # transient: gone when destroyed
        (tmp / "gone").rmdir()
        dom = conn.defineXML(agent_guest_xml(hv, initrd, name, volume, log))
        dom.create()
        made = AgentRig(bot, lv, hv, name, log, broken)
        wait_for(lambda: READY in log.read_text(errors="replace"), 90, f"{name} to mount /data and start qemu-ga")
        wait_for(lambda: _answers(made), 60, "the guest agent to answer guest-ping", every=0.5)
        yield made
    finally:
        bot.close()
        cleanup(lv, hv.pool, name, volume, broken, log)


def cleanup(lv: Libvirt, pool_name: str, name: str, volume: str, broken: str, log: Path) -> None:
    """The domain (and any checkpoint metadata), its volume, staging copies left by a failure, the pool."""
    conn = lv.conn
    uuid = ""
    try:
        dom = conn.lookupByName(name)
        uuid = dom.UUIDString()
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    except libvirt.libvirtError:
        pass
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(name) or (uuid and uuid in vol.name()):
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
    try:
        conn.storagePoolLookupByName(broken).destroy()
    except libvirt.libvirtError:
        pass
    log.unlink(missing_ok=True)
    (SERIAL_LOG_DIR / f"{name}.log").unlink(missing_ok=True)


def set_id(reply: Reply) -> str:
    return reply.headline.split("backup (", 1)[1].split(") ", 1)[1].split(" ", 1)[0]


def test_the_guest_has_a_filesystem_the_agent_can_freeze(rig: AgentRig) -> None:
    """The rig itself: otherwise an "application-consistent" backup below would have frozen nothing."""
    before = len(rig.hooks())
    assert rig.dom().fsFreeze() >= 1  # /data; the initramfs root is not counted
    try:
        assert rig.agent("guest-fsfreeze-status") == "frozen"
    finally:
        rig.dom().fsThaw()
    assert rig.agent("guest-fsfreeze-status") == "thawed"
    assert rig.hooks_after(before, 2) == ["freeze", "thaw"]


def test_a_live_backup_with_the_agent_is_application_consistent_and_leaves_the_guest_thawed(rig: AgentRig) -> None:
    before = len(rig.hooks())
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert reply.status is Status.OK and "application-consistent" in reply.headline, reply.text()
    entry = rig.bot.backups.catalog.get(set_id(reply))
    assert entry is not None and entry.kind == "disk" and entry.consistency == "application"
    assert rig.hooks_after(before, 2) == ["freeze", "thaw"]  # one freeze, around the start only
    assert rig.agent("guest-fsfreeze-status") == "thawed"
    assert rig.dom().state()[0] == libvirt.VIR_DOMAIN_RUNNING
    listed = rig.ask(f"backups {HOST}/{rig.name}")
    assert "application" in listed.text(), listed.text()


def test_the_agent_channel_libvirt_keeps_passes_the_restore_allowlist(rig: AgentRig) -> None:
    """What a restore of this VM defines: the channel as libvirt stores it (socket path its own) is allowed."""
    inactive = rig.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "org.qemu.guest_agent.0" in inactive and " path=" not in inactive.split("<channel", 1)[1].split("</")[0]
    os_files = [rig.hv.kernel, os.environ[AGENT_ENV], str(rig.serial_log)]  # vouched as a clone would
    assert xmlcheck.problems(inactive, xmlcheck.host_rules(rig.lv.conn, [rig.hv.pool], os_files)) == []
    with_path = inactive.replace("<channel type='unix'>", "<channel type='unix'><source mode='bind' path='/x'/>")
    refused = xmlcheck.problems(with_path, xmlcheck.host_rules(rig.lv.conn, [rig.hv.pool], os_files))
    assert refused and all("devices/channel" in p for p in refused), refused


def test_a_job_that_fails_to_start_after_the_freeze_still_thaws(rig: AgentRig, tmp_path: Path) -> None:
    config = dataclasses.replace(
        rig.bot.config, store_path=str(tmp_path / "vmbot.db"), backups_dir=tmp_path / "backups",
        backup_staging_pool=rig.broken_pool,
    )  # fmt: skip
    bot = Bot(config, AllowAll(), audit=Audit(config.store_path))
    try:
        before = len(rig.hooks())
        reply = rig.ask(f"backup {HOST}/{rig.name} --disk", bot)
        assert reply.status is not Status.OK, reply.text()
        assert rig.hooks_after(before, 2) == ["freeze", "thaw"]  # frozen, then the job failed, then thawed
        assert rig.agent("guest-fsfreeze-status") == "thawed"
        assert bot.backups.catalog.entries() == []
        assert bot.backups.jobs.db.all("SELECT set_id FROM backup_jobs") == []
        assert rig.dom().jobStats().get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE
        assert rig.dom().state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        bot.close()


def run_in_guest(rig: AgentRig, *argv: str) -> int:
    """A busybox command in the guest through the agent (guest-exec; tests only): its exit code."""
    call = {"execute": "guest-exec", "arguments": {"path": argv[0], "arg": list(argv[1:])}}
    pid = json.loads(libvirt_qemu.qemuAgentCommand(rig.dom(), json.dumps(call), 10, 0))["return"]["pid"]
    status: dict = {}

    def exited() -> bool:
        query = json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
        status.update(json.loads(libvirt_qemu.qemuAgentCommand(rig.dom(), query, 10, 0))["return"])
        return bool(status.get("exited"))

    wait_for(exited, 20, f"{argv} to exit in the guest")
    return int(status.get("exitcode", -1))


def test_an_agent_with_no_filesystem_to_freeze_gives_a_crash_consistent_backup_and_is_thawed(rig: AgentRig) -> None:
    """The agent answers, but nothing is mounted that it can freeze: nothing was quiesced, so "crash"."""
    assert run_in_guest(rig, "/bin/umount", "/data") == 0
    try:
        assert rig.dom().fsFreeze() == 0  # the agent answers, and froze no filesystem
        rig.dom().fsThaw()
        before = len(rig.hooks())
        reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
        assert reply.status is Status.OK and "crash-consistent" in reply.headline, reply.text()
        entry = rig.bot.backups.catalog.get(set_id(reply))
        assert entry is not None and entry.consistency == "crash"
        assert rig.hooks_after(before, 2) == ["freeze", "thaw"]
        assert rig.agent("guest-fsfreeze-status") == "thawed"
    finally:
        if rig.agent("guest-fsfreeze-status") != "thawed":
            rig.dom().fsThaw()
        assert run_in_guest(rig, "/bin/mount", "-t", "ext4", "/dev/vda", "/data") == 0


def test_verify_boot_of_an_agent_guests_backup_waits_for_its_agent(rig: AgentRig) -> None:
    """The restore allowlist takes pool files only: the kernel and initrd go into the pool and the persistent
    definition names them, without the serial log (the running guest keeps its own)."""
    pool = rig.lv.conn.storagePoolLookupByName(rig.hv.pool)
    kernel = upload_file(rig.lv.conn, pool, f"{rig.name}-vmlinuz", rig.hv.kernel)
    initrd = upload_file(rig.lv.conn, pool, f"{rig.name}-initrd", os.environ[AGENT_ENV])
    root = ET.fromstring(rig.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    root.find("os/kernel").text, root.find("os/initrd").text = kernel, initrd  # type: ignore[union-attr]
    serial = root.find("devices/serial")
    serial.remove(serial.find("log"))  # type: ignore[union-attr,arg-type]
    rig.lv.conn.defineXML(ET.tostring(root, encoding="unicode"))
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert reply.status is Status.OK and "application-consistent" in reply.headline, reply.text()
    entry = rig.bot.backups.catalog.get(set_id(reply))
    assert entry is not None
    booted = rig.ask(f"verify --from {entry.id} --boot")
    assert booted.status is Status.OK and "its guest agent answered" in booted.headline, booted.text()
    assert bootcheck.scratch_name(entry) not in [d.name() for d in rig.lv.conn.listAllDomains()]  # removed again


DIES_FROZEN = """
import os, signal, sys, libvirt
from bot.backup import quiesce
from bot.backup.jobs import Jobs
from bot.store.audit import Audit
from bot.store.db import Store
uri, uuid, pool, store = sys.argv[1:5]
dom = libvirt.open(uri).lookupByUUIDString(uuid)
Jobs(Store(Audit(store))).start("20260101T000000Z-froze0", "lab", uuid, pool, [])
assert quiesce.freeze(dom) >= 1
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_bot_killed_while_the_guest_is_frozen_thaws_it_at_its_next_start(rig: AgentRig, tmp_path: Path) -> None:
    config = dataclasses.replace(
        rig.bot.config, store_path=str(tmp_path / "vmbot.db"), backups_dir=tmp_path / "backups"
    )
    uuid = rig.dom().UUIDString()
    args = [rig.hv.uri, uuid, rig.hv.pool, config.store_path]
    child = subprocess.run(
        [sys.executable, "-c", DIES_FROZEN, *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert rig.agent("guest-fsfreeze-status") == "frozen"  # the dead bot left it so
        second = Bot(config, AllowAll(), audit=Audit(config.store_path))  # the next start
        try:
            assert rig.agent("guest-fsfreeze-status") == "thawed"
            assert second.backups.jobs.db.all("SELECT set_id FROM backup_jobs") == []
        finally:
            second.close()
    finally:
        if rig.agent("guest-fsfreeze-status") != "thawed":  # never leave the shared guest frozen for later tests
            rig.dom().fsThaw()


def test_zy_an_agent_that_stops_between_freeze_and_thaw_is_said_in_the_reply(
    rig: AgentRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The freeze worked, then the agent could not answer before the thaw: the backup is made, but the guest
    may sit frozen (its writes wait) until the agent answers, so the reply says so instead of a plain success.
    The fault lands at that exact point: the VM is paused just before the bot's thaw goes out (a frozen
    agent refuses guest-exec, so it cannot be stopped from inside), and resumed a while later."""
    monkeypatch.setattr(quiesce, "WAIT", 3.0)
    real_thaw = diskbackup.thaw

    timers: list[threading.Timer] = []

    def agent_stops_first(dom: libvirt.virDomain) -> bool:
        dom.suspend()
        timers.append(threading.Timer(8.0, dom.resume))
        timers[0].start()
        return real_thaw(dom)

    monkeypatch.setattr(diskbackup, "thaw", agent_stops_first)
    before = len(rig.hooks())
    try:
        reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    finally:
        for timer in timers:
            timer.join()  # the VM runs again before anything else touches it
    try:
        assert reply.status is Status.OK and "application-consistent" in reply.headline, reply.text()
        assert "did not confirm the thaw" in reply.text() and "may still be frozen" in reply.text(), reply.text()
        assert rig.agent("guest-fsfreeze-status") == "frozen"  # what the warning is about: nobody thawed it yet
    finally:
        quiesce.thaw(rig.dom())  # what the operator does next; and never leave the shared guest frozen
    wait_for(lambda: _answers(rig), 30, "the agent to wake up")
    wait_for(lambda: rig.agent("guest-fsfreeze-status") == "thawed", 20, "the thaw in flight to land")
    assert rig.hooks_after(before, 2) == ["freeze", "thaw"]


def test_zz_a_stopped_agent_does_not_hold_up_the_backup_and_a_freeze_that_lands_late_is_thawed(
    rig: AgentRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qemu-ga stopped (SIGSTOP) for a while: libvirt waits for an agent without a deadline, the backup does
    not; it goes on crash-consistent. The freeze it asked for reaches the agent when it wakes up: it is
    thawed at once. Named zz: the agent is away for a while, so this runs last."""
    monkeypatch.setattr(quiesce, "WAIT", 3.0)  # the bot's deadline for a freeze; the agent sleeps far longer
    away = "sleep 1; kill -STOP $(pidof qemu-ga); sleep 12; kill -CONT $(pidof qemu-ga)"
    call = {"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", away]}}
    libvirt_qemu.qemuAgentCommand(rig.dom(), json.dumps(call), 10, 0)
    time.sleep(2)  # the agent is stopped by now; were it not, the backup below would freeze in time
    before, started = len(rig.hooks()), time.monotonic()
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    took = time.monotonic() - started
    assert reply.status is Status.OK and "crash-consistent" in reply.headline, (took, reply.text())  # no wait
    assert rig.hooks_after(before, 2) == ["freeze", "thaw"]  # the late freeze, then its thaw
    wait_for(lambda: rig.agent("guest-fsfreeze-status") == "thawed", 20, "the guest to be thawed")
