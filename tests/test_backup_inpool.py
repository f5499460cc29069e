"""Disk copies kept in the host's pool ([backups] disk_copies = { HOST = "pool" }) on libvirt's test driver.

The test driver has storage pools and copies volumes (storageVolCreateXMLFrom)
but streams nothing (no volume download): what needs a stream fails here as it
would on a host that cannot stream, and the real-hypervisor tier
(tests/hypervisor/test_backup_pool_real.py) covers the happy path.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from bot.backup import configbackup, inpool
from bot.backup.digest import KIND
from bot.backup.files import Stored, new_id
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, Volume

POOL = "/fleet-pool"
WEB = "22222222-0000-4000-8000-000000000001"
DOTS = "22222222-0000-4000-8000-000000000002"


SET = new_id()  # a set whose kept volume is in the fleet file: every connection to the host sees it


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    fleet = {
        "kvm01": [
            Vm("web-01", uuid=WEB, disks=[f"{POOL}/web-01.img"]),
            Vm("..", "shut off", uuid=DOTS, disks=[f"{POOL}/dotdot.img"]),
        ]
    }
    kept = Volume(f"vmbot-backup-{SET}-{DOTS}-disk0.img", 1 << 20)
    volumes = {"kvm01": [Volume("web-01.img", 1 << 30), Volume("dotdot.img", 1 << 20), kept]}
    return make_bot(
        fleet=fleet,
        volumes=volumes,
        backups_dir=tmp_path / "backups",
        backup_pools=("default",),
        backup_staging_pool="default",
        backup_disk_copies={"kvm01": "pool"},
    )


def conn(bot: Bot) -> libvirt.virConnect:
    return bot.pool.call("kvm01", lambda c: c)


def pool_volumes(bot: Bot) -> list[str]:
    pool = conn(bot).storagePoolLookupByName("default")
    pool.refresh(0)
    return sorted(v.name() for v in pool.listAllVolumes())


def kept_set(bot: Bot, uuid: str, set_id: str | None = None) -> tuple[str, str]:
    """A disk backup kept in the pool as a real one is written: config files in the store, the disk a volume
    of the pool named by id + UUID, listed in the manifest with its pool. (The test driver cannot stream, so
    the checksum is not the volume's: verify must say it could not read it, never that it is good.)"""
    assert bot.backups.store is not None
    dom = conn(bot).lookupByUUIDString(uuid)
    writer = bot.backups.store.writer(set_id)
    info = configbackup.write_config(writer, dom, "kvm01")
    name = f"vmbot-backup-{writer.id}-{uuid}-disk0.img"
    if set_id is None:  # made on the bot's connection only (a test:/// file's state is per connection)
        vol = ET.Element("volume")
        ET.SubElement(vol, "name").text = name
        ET.SubElement(vol, "capacity").text = str(1 << 20)
        conn(bot).storagePoolLookupByName("default").createXML(ET.tostring(vol, encoding="unicode"), 0)
    extra = {"dev": "vda", "format": "raw", "index": 0, "allocated": 0, "pool": "default"}
    writer.listed(Stored(name, "disk", 1 << 20, "0" * 64, extra, KIND))
    entry = configbackup.finish(writer, bot.backups.catalog, info, "disk", "offline")
    return entry.id, name


def test_a_kept_copy_that_cannot_be_hashed_leaves_no_volume_and_nothing_cataloged(bot: Bot, actor: Actor) -> None:
    before = pool_volumes(bot)
    reply = bot.handle("backup kvm01/.. --disk", actor)  # the copy is made on the host; its checksum needs a stream
    assert reply.status is Status.FAILED and "virStorageVolDownload" in reply.text(), reply.text()
    assert pool_volumes(bot) == before  # the copy made in the pool was deleted again
    assert bot.backups.catalog.entries() == []
    assert bot.backups.store is not None and bot.backups.store.ids() == []
    assert [p.name for p in bot.backups.store.root.iterdir()] == []  # no temporary folder either


def test_prune_deletes_the_pool_volume_with_the_set(bot: Bot, actor: Actor) -> None:
    old, old_vol = kept_set(bot, DOTS)
    new, new_vol = kept_set(bot, DOTS)
    listing = bot.handle("backups ..", actor)
    assert all("disks kept in pool default on kvm01" in line for line in listing.lines), listing.text()
    assert {old_vol, new_vol} <= set(pool_volumes(bot))
    bot.config.backup_keep = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    done = bot.handle("prune", actor)
    assert done.status is Status.OK and "removed 1 of 1" in done.headline and old in done.text(), done.text()
    assert old_vol not in pool_volumes(bot) and new_vol in pool_volumes(bot)
    assert [e.id for e in bot.backups.catalog.entries()] == [new]
    assert bot.backups.store is not None and bot.backups.store.ids() == [new]


def test_prune_keeps_a_set_whose_volume_it_cannot_reach(bot: Bot, actor: Actor) -> None:
    old, old_vol = kept_set(bot, DOTS)
    kept_set(bot, DOTS)
    bot.config.backup_keep = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    pool = conn(bot).storagePoolLookupByName("default")
    pool.destroy()  # the backup pool is stopped: its volumes cannot be deleted now
    done = bot.handle("prune", actor)
    assert done.status is Status.FAILED and f"kept {old}" in done.text() and old_vol in done.text(), done.text()
    pool.create(0)
    assert bot.backups.catalog.get(old) is not None and old_vol in pool_volumes(bot)  # nothing forgotten
    assert bot.backups.store is not None and old in bot.backups.store.ids()
    assert "removed 1 of 1" in bot.handle("prune", actor).headline  # and it goes once the pool is back


def test_verify_reads_a_kept_copy_through_libvirt_and_marks_only_what_it_saw(bot: Bot, actor: Actor) -> None:
    first, _ = kept_set(bot, DOTS, SET)  # its volume exists on the host
    unread = bot.handle(f"verify --from {first}", actor)
    assert unread.status is Status.FAILED and "could not be read now (not marked)" in unread.headline, unread.text()
    assert "virStorageVolDownload" in unread.text()  # it asked libvirt for a stream, not for a file
    entry = bot.backups.catalog.get(first)
    assert entry is not None and entry.status == "good"  # a host that cannot stream says nothing of the copy
    second, second_vol = kept_set(bot, DOTS)  # verify's own connection to the host does not see this one
    gone = bot.handle(f"verify --from {second}", actor)
    assert gone.status is Status.FAILED and "1 BAD" in gone.headline, gone.text()
    assert f"{second_vol} is missing from its pool" in gone.text()
    entry = bot.backups.catalog.get(second)
    assert entry is not None and entry.status == "bad"


def test_kept_volume_names_never_carry_the_vm_name() -> None:
    from bot.backup.diskbackup import Disk

    names = inpool.volume_names("20260101T000000Z-abcdef", DOTS, [Disk(0, "vda", "raw", "/p/../a/b")])
    assert names == [f"vmbot-backup-20260101T000000Z-abcdef-{DOTS}-disk0.img"]


def test_a_dead_bots_half_made_copy_is_deleted_at_start_but_a_complete_sets_stays(bot: Bot) -> None:
    done, done_vol = kept_set(bot, DOTS)  # complete on disk when the bot "died"
    half = new_id()
    half_vol = f"vmbot-backup-{half}-{DOTS}-disk0.img"
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = half_vol
    ET.SubElement(vol, "capacity").text = str(1 << 20)
    conn(bot).storagePoolLookupByName("default").createXML(ET.tostring(vol, encoding="unicode"), 0)
    jobs = bot.backups.jobs
    for sid, name in ((done, done_vol), (half, half_vol)):
        jobs.start(sid, "kvm01", DOTS, "default", [name])
    jobs.db.run("UPDATE backup_jobs SET started = 'long ago'")  # their owner is gone (its pid now runs another start)
    cleaned = jobs.recover(lambda host, fn: bot.pool.call(host, fn), bot.backups.committed)
    assert sorted(cleaned) == sorted([done, half])
    assert half_vol not in pool_volumes(bot)  # never cataloged, never a backup: it goes
    assert done_vol in pool_volumes(bot)  # the set was renamed into place: its manifest names this volume
    assert jobs.db.all("SELECT * FROM backup_jobs") == []


def test_hostile_a_manifest_naming_a_vms_own_disk_never_gets_it_deleted_or_read(bot: Bot, actor: Actor) -> None:
    sid, vol = kept_set(bot, DOTS)
    assert bot.backups.store is not None
    manifest = bot.backups.store.manifest(sid)
    for f in manifest["files"]:
        if f["role"] == "disk":
            f["name"] = "dotdot.img"  # the VM's live disk, in the same pool
    bot.backups.store.update_manifest(sid, files=manifest["files"])
    assert bot.backups.catalog.reindex(bot.backups.store)[0] == 1  # the catalog now says what the manifest says
    restored = bot.handle(f"restore kvm01/.. --from {sid} --as copy", actor)
    assert restored.status is Status.FAILED and "not a volume this backup made" in restored.text(), restored.text()
    verdict = bot.handle(f"verify --from {sid}", actor)
    assert "'dotdot.img' is not a volume this backup made" in verdict.text(), verdict.text()
    kept_set(bot, DOTS)  # a newer good one, so retention lets the tampered one go
    bot.config.backup_keep = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    assert bot.handle("prune", actor).status is Status.OK
    assert bot.backups.catalog.get(sid) is None
    assert "dotdot.img" in pool_volumes(bot) and vol in pool_volumes(bot)  # the VM's disk is untouched
