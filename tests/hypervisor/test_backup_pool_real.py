"""Disk backups kept in the host's pool ([backups] disk_copies = { HOST = "pool" }) on the real hypervisor.

A cold copy made on the host, hashed through a libvirt stream, verified, restored
after the VM and its disk are lost, a flipped byte found, pruned with its volume;
then a live (push) copy kept in the pool while the guest runs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from bot.backup import digest
from bot.reply import Status
from tests.hypervisor.conftest import HOST, Env, Libvirt, guest_xml, volume_xml
from tests.hypervisor.test_backup_real import Rig, backup_bot, cleanup, compare, set_id, upload_file


@pytest.fixture(scope="module")
def rig(hv: Env, lv: Libvirt, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    name = f"vmbot-t-bkp-{secrets.token_hex(3)}"
    conn, pool = lv.conn, lv.conn.storagePoolLookupByName(hv.pool)
    pool_dir = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
    volumes = [f"{name}-vmlinuz", f"{name}-initrd", f"{name}.qcow2"]
    tmp = tmp_path_factory.mktemp("bkp")
    bot = backup_bot(hv, tmp, backup_disk_copies={HOST: "pool"})
    uuid = ""
    try:
        kernel = upload_file(conn, pool, volumes[0], hv.kernel)
        initrd = upload_file(conn, pool, volumes[1], hv.initrd["acpi"])
        disk = pool.createXML(volume_xml(volumes[2]), 0).path()
        pattern = ["-c", "write -P 0x5a 0 1M", "-c", "write -P 0xc3 6M 256k"]
        subprocess.run(["qemu-io", "-f", "qcow2", *pattern, disk], check=True, capture_output=True, timeout=60)
        root = ET.fromstring(guest_xml(hv, name, "acpi", volumes[2], Path("/nonexistent"), "console=ttyS0"))
        root.find("os/kernel").text, root.find("os/initrd").text = kernel, initrd  # type: ignore[union-attr]
        serial = root.find("devices/serial")
        serial.remove(serial.find("log"))  # type: ignore[union-attr,arg-type]
        uuid = conn.defineXML(ET.tostring(root, encoding="unicode")).UUIDString()
        yield Rig(bot, lv, hv, name, pool_dir, tmp / "backups")
    finally:
        bot.close()
        kept = [n for n in os.listdir(pool_dir) if uuid and n.startswith("vmbot-backup-") and uuid in n]
        cleanup(lv, hv.pool, name, volumes + kept)


def kept_volumes(rig: Rig, sid: str) -> list[str]:
    return sorted(n for n in os.listdir(rig.pool_dir) if n.startswith(f"vmbot-backup-{sid}-"))


def test_a_cold_backup_kept_in_the_pool_verifies_restores_and_is_pruned_with_its_volume(rig: Rig) -> None:
    dom = rig.dom()
    if dom.isActive():
        dom.destroy()
    uuid, disk = dom.UUIDString(), rig.disk_path()
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert reply.status is Status.OK and "offline-consistent" in reply.headline, reply.text()
    sid = set_id(reply)
    (kept,) = kept_volumes(rig, sid)
    assert kept == f"vmbot-backup-{sid}-{uuid}-disk0.qcow2"  # catalog id + UUID, never the VM's name
    assert sorted(p.suffix for p in (rig.store / sid).iterdir()) == [".json", ".json", ".xml"]  # no disk here
    entry = rig.bot.backups.catalog.get(sid)
    assert entry is not None
    (listed,) = [f for f in entry.files if f["role"] == "disk"]
    assert listed["name"] == kept and listed["extra"]["pool"] == rig.hv.pool
    kept_path = f"{rig.pool_dir}/{kept}"
    assert listed["sha256"] == digest.file_digest(kept_path)  # the stream's checksum is the volume's
    assert compare(disk, kept_path).returncode == 0
    assert "disks kept in pool" in rig.ask(f"backups {HOST}/{rig.name}").text()

    good = rig.ask(f"verify --from {sid}")
    assert good.status is Status.OK and "all good" in good.headline, good.text()

    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    rig.lv.conn.storageVolLookupByPath(disk).delete(0)  # the VM and its disk are lost
    back = rig.ask(f"restore {HOST}/{rig.name} --from {sid}")
    assert back.status is Status.OK and "and 1 disk(s)" in back.headline, back.text()
    assert rig.dom().UUIDString() == uuid and rig.disk_path() == disk
    assert compare(disk, kept_path).returncode == 0
    assert [p for p in rig.store.iterdir() if p.name.startswith(".tmp-")] == []  # the fetched copy is gone

    with open(kept_path, "r+b") as f:  # flip one byte of the kept copy, in its data
        f.seek(os.path.getsize(kept_path) - 1)
        last = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([last[0] ^ 0xFF]))
    bad = rig.ask(f"verify --from {sid}")
    assert bad.status is Status.FAILED and "does not match its sha256" in bad.text(), bad.text()
    assert rig.bot.backups.catalog.get(sid).status == "bad"  # type: ignore[union-attr]

    rig.bot.config.backup_keep = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    again = rig.ask(f"backup {HOST}/{rig.name} --disk")  # retention after it removes the bad one
    assert again.status is Status.OK and "retention removed 1" in again.headline, again.text()
    assert kept_volumes(rig, sid) == [] and rig.bot.backups.catalog.get(sid) is None
    assert len(kept_volumes(rig, set_id(again))) == 1


def test_a_live_backup_kept_in_the_pool_leaves_the_guest_running(rig: Rig) -> None:
    dom = rig.dom()
    if not dom.isActive():
        dom.create()
    reply = rig.ask(f"backup {HOST}/{rig.name} --disk")
    assert reply.status is Status.OK and "crash-consistent" in reply.headline, reply.text()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    sid = set_id(reply)
    (kept,) = kept_volumes(rig, sid)
    assert kept.endswith("-disk0.qcow2") and not [n for n in os.listdir(rig.pool_dir) if sid in n and n != kept]
    assert compare(rig.disk_path(), f"{rig.pool_dir}/{kept}").returncode == 0  # the guest does not write its disk
    entry = rig.bot.backups.catalog.get(sid)
    assert entry is not None and entry.parent == "" and entry.checkpoint == ""  # kept in a pool: full copies
    good = rig.ask(f"verify --from {sid}")
    assert good.status is Status.OK, good.text()
    dom.destroy()
    booted = rig.ask(f"verify --from {sid} --boot")  # restored from the pool under a scratch name, booted, removed
    assert booted.status is Status.OK and "booted a scratch copy (no network)" in booted.headline, booted.text()
    assert not [d for d in rig.lv.conn.listAllDomains() if d.name() == f"vmbot-verify-{sid}"]
    assert [p for p in rig.store.iterdir() if p.name.startswith(".tmp-")] == []
