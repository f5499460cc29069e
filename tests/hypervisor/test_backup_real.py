"""Disk backups on the real hypervisor: live (push job) and cold, restore --as that boots, verify,
destroy during a live backup, and a dead bot's job cleaned at the next start.

The guest here is the tiny acpi guest with its kernel and initrd copied into
the pool (so its definition passes the restore allowlist) and a pattern
written into its qcow2 disk with qemu-io (only tests use qemu tools).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from bot.backup import digest, diskbackup, sparse
from bot.backup.files import Store
from bot.config import Config
from bot.policy import AllowAll
from bot.reply import Reply, Status
from bot.service import Bot
from bot.store.audit import Actor, Audit
from tests.hypervisor.conftest import HOST, Env, Libvirt, guest_xml, volume_xml, wait_for

ME = Actor(user="U0HV", channel="C0HV", unix_user="tester", source="terminal")


@dataclass
class Rig:
    bot: Bot
    lv: Libvirt
    hv: Env
    name: str
    pool_dir: str
    store: Path

    def ask(self, text: str, progress: Callable[[str], None] | None = None) -> Reply:
        return self.bot.handle(text, ME, progress)

    def dom(self, name: str | None = None) -> libvirt.virDomain:
        return self.lv.conn.lookupByName(name or self.name)

    def disk_path(self, name: str | None = None) -> str:
        root = ET.fromstring(self.dom(name).XMLDesc(0))
        source = root.find("devices/disk/source")
        assert source is not None
        if source.get("file"):
            return source.get("file", "")
        return f"{self.pool_dir}/{source.get('volume')}"

    def staged(self) -> list[str]:
        return [n for n in os.listdir(self.pool_dir) if n.startswith("vmbot-staging-")]

    def stored_disk(self, set_id: str) -> Path:
        return next((self.store / set_id).glob("*-disk0.*"))


def upload_file(conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str, path: str) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(os.path.getsize(path))
    ET.SubElement(ET.SubElement(vol, "target"), "format", type="raw")
    made = pool.createXML(ET.tostring(vol, encoding="unicode"), 0)
    stream = conn.newStream(0)
    made.upload(stream, 0, 0, 0)
    with open(path, "rb") as f:
        stream.sendAll(lambda _s, n, fh: fh.read(n), f)
    stream.finish()
    return made.path()


def compare(a: str, b: str) -> subprocess.CompletedProcess:
    """qemu-img compare, sharing the lock with a running guest (-U)."""
    return subprocess.run(["qemu-img", "compare", "-U", a, b], capture_output=True, text=True, timeout=60, check=False)


def backup_bot(hv: Env, tmp: Path, **more: object) -> Bot:
    """A bot whose backups go to ``tmp`` and whose staging pool (and the pool restores may use) is the tier's."""
    config = Config(
        hosts={HOST: hv.uri},
        store_path=str(tmp / "vmbot.db"),
        backups_dir=tmp / "backups",
        backup_pools=(hv.pool,),
        backup_staging_pool=hv.pool,
        source="tests/hypervisor",
        **more,  # type: ignore[arg-type]
    )
    return Bot(config, AllowAll(), audit=Audit(config.store_path))


@pytest.fixture(scope="module")
def rig(hv: Env, lv: Libvirt, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tag = secrets.token_hex(3)
    name = f"vmbot-t-bk-{tag}"
    conn, pool = lv.conn, lv.conn.storagePoolLookupByName(hv.pool)
    pool_dir = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
    volumes = [f"{name}-vmlinuz", f"{name}-initrd", f"{name}.qcow2"]
    tmp = tmp_path_factory.mktemp("bk")
    bot = backup_bot(hv, tmp)
    try:
        kernel = upload_file(conn, pool, volumes[0], hv.kernel)
        initrd = upload_file(conn, pool, volumes[1], hv.initrd["acpi"])
        vol = ET.fromstring(volume_xml(volumes[2]))
        ET.SubElement(vol.find("target"), "compat").text = "1.1"  # qcow2 v3: it can hold checkpoint bitmaps
        disk = pool.createXML(ET.tostring(vol, encoding="unicode"), 0).path()
        pattern = ["-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 8M 512k"]
        subprocess.run(["qemu-io", "-f", "qcow2", *pattern, disk], check=True, capture_output=True, timeout=60)
        root = ET.fromstring(guest_xml(hv, name, "acpi", volumes[2], Path("/nonexistent"), "console=ttyS0"))
        root.find("os/kernel").text, root.find("os/initrd").text = kernel, initrd  # type: ignore[union-attr]
        serial = root.find("devices/serial")
        serial.remove(serial.find("log"))  # type: ignore[union-attr,arg-type]
        conn.defineXML(ET.tostring(root, encoding="unicode"))
        yield Rig(bot, lv, hv, name, pool_dir, tmp / "backups")
    finally:
        bot.close()
        cleanup(lv, hv.pool, name, volumes)


def cleanup(lv: Libvirt, pool_name: str, name: str, volumes: list[str]) -> None:
    """Every domain named after the rig (copies too) and every volume it made; each step on its own."""
    conn = lv.conn  # reopened if libvirtd was restarted meanwhile (another test may do that)
    for dom in conn.listAllDomains():
        if not dom.name().startswith(name):
            continue
        volumes.append(f"{dom.UUIDString()}-disk0.qcow2")
        flags = libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        for step in (dom.destroy, lambda d=dom, f=flags: d.undefineFlags(f)):
            try:
                step()
            except libvirt.libvirtError:
                pass
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    for vol in volumes:
        try:
            pool.storageVolLookupByName(vol).delete(0)
        except libvirt.libvirtError:
            pass


def set_id(reply: Reply) -> str:
    return reply.headline.split("backup (", 1)[1].split(") ", 1)[1].split(" ", 1)[0]


def test_live_disk_backup_keeps_the_guest_running_and_restores_as_a_copy_that_boots(rig: Rig) -> None:
    dom = rig.dom()
    if not dom.isActive():
        dom.create()
    notes: list[str] = []
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk", notes.append)
    assert reply.status is Status.OK and "crash-consistent" in reply.headline, reply.text()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # never paused, still running
    assert any("guest keeps running" in n for n in notes)
    sid = set_id(reply)
    stored = rig.stored_disk(sid)
    assert compare(rig.disk_path(), str(stored)).returncode == 0  # the guest does not write to its disk
    assert os.stat(stored).st_blocks * 512 < 4 << 20  # sparse: ~1.5 MiB of data in a 16 MiB disk
    assert rig.staged() == [] or all(rig.name not in n for n in rig.staged())
    entry = rig.bot.backups.catalog.get(sid)
    assert entry and entry.kind == "disk" and entry.consistency == "crash"

    copy = f"{rig.name}-copy"
    restored = rig.ask(f"restore {HOST}/{rig.name} --as {copy}")
    assert restored.status is Status.OK and "holding the backup's disk data" in restored.headline, restored.text()
    new = rig.dom(copy)
    assert new.UUIDString() != dom.UUIDString()
    assert rig.disk_path(copy) == f"{rig.pool_dir}/{new.UUIDString()}-disk0.qcow2"
    assert compare(rig.disk_path(copy), rig.disk_path()).returncode == 0
    booted = rig.ask(f"start {HOST}/{copy} --console")
    assert booted.status is Status.OK and any("VMBOT-GUEST-READY" in line for line in booted.console or [])
    new.destroy()

    volumes_before = set(os.listdir(rig.pool_dir))
    booted = rig.ask(f"verify --from {sid} --boot")
    assert booted.status is Status.OK and "booted a scratch copy (no network)" in booted.headline, booted.text()
    assert not [d for d in rig.lv.conn.listAllDomains() if d.name() == f"vmbot-verify-{sid}"]
    assert not {n for n in set(os.listdir(rig.pool_dir)) - volumes_before if "-disk0" in n}  # its volume is gone
    assert "boot: booted" in rig.bot.backups.catalog.get(sid).verify_result

    data = bytearray(stored.read_bytes()[: 1 << 16])
    with open(stored, "r+b") as f:  # flip one byte of the stored header cluster
        f.seek(4096)
        f.write(bytes([data[4096] ^ 0xFF]))
    verdict = rig.ask(f"verify --from {sid}")
    assert verdict.status is Status.FAILED and "does not match its sha256" in verdict.text()
    assert rig.bot.backups.catalog.get(sid).status == "bad"


def guest_write(dom: libvirt.virDomain, pattern: int, offset: str, length: str) -> None:
    """Write into the running guest's disk through QEMU itself (test only: HMP qemu-io), so its checkpoint sees it."""
    cmd = f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P {pattern} {offset} {length}"'
    out = libvirt_qemu.qemuMonitorCommand(dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert "rror" not in out, out


def guest_flush(dom: libvirt.virDomain) -> None:
    cmd = 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "flush"'
    libvirt_qemu.qemuMonitorCommand(dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)


def test_incremental_backup_after_a_write_is_smaller_and_restores_to_the_same_bytes(rig: Rig) -> None:
    dom = rig.dom()
    if not dom.isActive():
        dom.create()
    full = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert full.status is Status.OK and "incremental" not in full.headline, full.text()
    full_id = set_id(full)
    assert rig.bot.backups.catalog.get(full_id).checkpoint == f"vmbot-{full_id}"
    guest_write(dom, 0x5A, "2M", "64k")
    guest_write(dom, 0x6B, "12M", "8k")
    inc = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert inc.status is Status.OK and f"incremental on {full_id}" in inc.headline, inc.text()
    inc_id = set_id(inc)
    assert os.stat(rig.stored_disk(inc_id)).st_blocks < os.stat(rig.stored_disk(full_id)).st_blocks / 2
    assert [c.getName() for c in dom.listAllCheckpoints()] == [f"vmbot-{inc_id}"]  # only the newest is kept
    copy = f"{rig.name}-inc"
    restored = rig.ask(f"restore {HOST}/{rig.name} --from {inc_id} --as {copy}")
    assert restored.status is Status.OK, restored.text()
    guest_flush(dom)  # QEMU keeps qcow2 metadata cached: flush before qemu-img reads the live source
    assert compare(rig.disk_path(copy), rig.disk_path()).returncode == 0  # full + increment == the source now
    assert [p for p in rig.store.iterdir() if p.name.startswith(".tmp-")] == []  # the rebuilt disk is gone
    rig.lv.conn.lookupByName(copy).undefine()


def test_cold_disk_backup_of_a_shut_off_guest(rig: Rig) -> None:
    dom = rig.dom()
    if dom.isActive():
        dom.destroy()
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert reply.status is Status.OK and "offline-consistent" in reply.headline, reply.text()
    stored = rig.stored_disk(set_id(reply))
    assert compare(rig.disk_path(), str(stored)).returncode == 0
    assert os.path.getsize(stored) == os.path.getsize(rig.disk_path())  # the qcow2 file itself, holes kept
    assert os.stat(stored).st_blocks <= os.stat(rig.disk_path()).st_blocks + 8
    (listed,) = [f for f in rig.bot.backups.catalog.get(set_id(reply)).files if f["role"] == "disk"]
    assert listed["checksum"] == digest.KIND and listed["sha256"] == digest.file_digest(stored)  # stream == disk
    uuid, disk = dom.UUIDString(), rig.disk_path()
    refused = rig.ask(f"restore {HOST}/{rig.name}")
    assert refused.status is Status.REFUSED and "still exists" in refused.headline
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)  # its checkpoints go with it
    rig.lv.conn.storageVolLookupByPath(disk).delete(0)  # the VM and its disk are lost
    back = rig.ask(f"restore {HOST}/{rig.name}")
    assert back.status is Status.OK and "and 1 disk(s)" in back.headline, back.text()
    assert rig.dom().UUIDString() == uuid and rig.disk_path() == disk
    assert compare(disk, str(stored)).returncode == 0


def test_a_cancelled_download_stops_mid_stream_and_the_next_one_is_whole(rig: Rig) -> None:
    vol = rig.lv.conn.storageVolLookupByPath(rig.disk_path())
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    store = Store(rig.store.parent / "cancel")
    writer = store.writer()
    with pytest.raises(diskbackup.Interrupted, match="cancelled"):
        diskbackup.download(rig.lv.conn, vol, writer, "d.qcow2", stop_after_three)
    assert len(asked) == 4  # it stopped at once, not after draining the stream
    writer.abandon()
    again = store.writer()
    whole = diskbackup.download(rig.lv.conn, vol, again, "d.qcow2", lambda: False)
    assert whole["sha256"] == digest.file_digest(rig.disk_path())
    again.abandon()


def test_a_download_handed_to_writeback_as_it_goes_is_whole_and_sparse(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sparse, "FLUSH", 64 << 10)  # a writeback hint every 64 KiB: many in this small disk
    disk = rig.disk_path()
    writer = Store(rig.store.parent / "flush").writer()
    got = diskbackup.download(rig.lv.conn, rig.lv.conn.storageVolLookupByPath(disk), writer, "d.qcow2", lambda: False)
    copy = writer.path("d.qcow2")
    assert got["sha256"] == digest.file_digest(disk) == digest.file_digest(copy)
    assert subprocess.run(["cmp", disk, str(copy)], capture_output=True, check=False).returncode == 0
    assert os.stat(copy).st_blocks <= os.stat(disk).st_blocks + 8  # holes stayed holes
    writer.abandon()


def test_destroy_during_a_live_backup_cancels_the_backup_first(rig: Rig) -> None:
    dom = rig.dom()
    if not dom.isActive():
        dom.create()
    before = {e.id for e in rig.bot.backups.catalog.entries()}
    answers: dict[str, Reply] = {}
    key = (HOST, dom.UUIDString())

    def during(note: str) -> None:  # called by the backup right after its job started
        if "job started" in note and "destroy" not in answers:
            threading.Thread(
                target=lambda: answers.setdefault("destroy", rig.ask(f"destroy {HOST}/{rig.name}"))
            ).start()
            wait_for(lambda: rig.bot.backups.jobs.running[key][0].is_set(), 20, "destroy to cancel the backup")

    backup = rig.ask(f"backup {HOST}/{rig.name} --disk", during)
    wait_for(lambda: "destroy" in answers, 30, "the destroy to answer")
    assert backup.status is Status.FAILED and "nothing was cataloged" in backup.headline, backup.text()
    assert answers["destroy"].status is Status.OK, answers["destroy"].text()
    assert "live backup was cancelled first" in answers["destroy"].headline
    assert not dom.isActive()
    assert {e.id for e in rig.bot.backups.catalog.entries()} == before
    assert [n for n in rig.staged() if dom.UUIDString() in n] == []
    assert [p for p in rig.store.iterdir() if p.name.startswith(".tmp-")] == []


DEAD_BOT = """
import os, signal, sys, libvirt
from bot.store.audit import Audit
from bot.backup import diskbackup
from bot.backup.jobs import Jobs
from bot.store.db import Store
uri, uuid, pool, store, backups = sys.argv[1:6]
conn = libvirt.open(uri)
dom = conn.lookupByUUIDString(uuid)
disks = diskbackup.disks_of(conn, dom.XMLDesc(0))
names = diskbackup.staging_names("20260101T000000Z-dead00", uuid, disks)
pool_dir = os.path.dirname(disks[0].path)
os.makedirs(os.path.join(backups, ".tmp-20260101T000000Z-dead00"), exist_ok=True)
Jobs(Store(Audit(store))).start("20260101T000000Z-dead00", "lab", uuid, pool, names)
diskbackup.start_job(dom, disks, pool_dir, names)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_bot_killed_during_a_live_backup_leaves_nothing_good_and_no_job_after_the_next_start(rig: Rig) -> None:
    dom = rig.dom()
    if not dom.isActive():
        dom.create()
    uuid = dom.UUIDString()
    rig.store.mkdir(exist_ok=True)
    child = subprocess.run(
        [sys.executable, "-c", DEAD_BOT, rig.hv.uri, uuid, rig.hv.pool, rig.bot.config.store_path, str(rig.store)],
        capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    rig.lv.conn.storagePoolLookupByName(rig.hv.pool).refresh(0)
    assert any(uuid in n for n in rig.staged())  # the dead bot's job wrote its staging volume
    second = Bot(rig.bot.config, AllowAll(), audit=Audit(rig.bot.config.store_path))  # the next start
    try:
        assert second.backups.jobs.db.all("SELECT set_id FROM backup_jobs") == []
        assert dom.jobStats().get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE
        assert [n for n in rig.staged() if uuid in n] == []
        assert not (rig.store / ".tmp-20260101T000000Z-dead00").exists()
        assert second.backups.catalog.get("20260101T000000Z-dead00") is None
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        second.close()


def test_h2_a_restored_disk_never_names_a_host_file_as_its_backing(rig: Rig, tmp_path: Path) -> None:
    dom = rig.dom()
    if dom.isActive():
        dom.destroy()
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert reply.status is Status.OK, reply.text()
    sid = set_id(reply)
    stored = rig.stored_disk(sid)
    secret = tmp_path / "host-secret"  # a host file outside every pool
    secret.write_bytes(b"host secret\n" * 4096)
    size = os.path.getsize(stored)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(stored) + ".x"],
                   check=True, timeout=60)  # fmt: skip
    os.replace(str(stored) + ".x", stored)  # an attacker with the store rewrites the disk and its sums
    manifest = rig.store / sid / "manifest.json"
    data = json.loads(manifest.read_text())
    for f in data["files"]:
        if f["role"] == "disk":
            f["size"], f["sha256"] = os.path.getsize(stored), digest.file_digest(stored)
    manifest.write_text(json.dumps(data))
    rig.bot.backups.catalog.reindex(rig.bot.backups.store)
    assert size > 0
    out = rig.ask(f"restore {HOST}/{rig.name} --from {sid} --as {rig.name}-h2bk")
    copies = [d for d in rig.lv.conn.listAllDomains() if d.name() == f"{rig.name}-h2bk"]
    if copies:
        path = rig.disk_path(f"{rig.name}-h2bk")
        info = subprocess.run(["qemu-img", "info", "-U", path], capture_output=True, text=True, timeout=60)
        assert str(secret) not in info.stdout, info.stdout
    assert copies or out.status is Status.REFUSED, out.text()
