"""Config backups, the catalog and store, restore (plain and --as), verify and prune, on libvirt's test driver."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from bot.backup.files import MANIFEST, sha256_file
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from policies.engine import load_policy
from tests.conftest import Vm, Volume, audit_rows, vmbot_exe, write_fleet

POOL = "/fleet-pool"
WEB = "22222222-0000-4000-8000-000000000001"


def fleet() -> dict[str, list[Vm]]:
    return {
        "kvm01": [
            Vm("web-01", uuid=WEB, disks=[f"{POOL}/web-01.img"]),
            Vm("..", "shut off", disks=[f"{POOL}/dotdot.img"]),
            Vm("db-01", "shut off"),
        ],
        "kvm02": [Vm("app-01")],
    }


VOLUMES = {"kvm01": [Volume("web-01.img", 1 << 30), Volume("dotdot.img", 1 << 20)]}


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return make_bot(fleet=fleet(), volumes=VOLUMES, backups_dir=tmp_path / "backups", backup_pools=("default",))


def conn(bot: Bot, host: str = "kvm01") -> libvirt.virConnect:
    """The bot's own connection to a host (each open of a test:/// file has private state)."""
    return bot.pool.call(host, lambda c: c)


def stable_xml(text: str) -> str:
    """The definition without what libvirt may fill in differently each time."""
    root = ET.fromstring(text)
    for el in root.iter():
        for child in list(el):
            if child.tag in ("alias",):
                el.remove(child)
    return ET.tostring(root, encoding="unicode")


def only_id(reply_headline: str) -> str:
    return reply_headline.split("config backup ", 1)[1].split(" ", 1)[0]


def test_backup_undefine_restore_gives_back_the_definition_and_autostart(bot: Bot, actor: Actor) -> None:
    c = conn(bot)
    dom = c.lookupByUUIDString(WEB)
    dom.setAutostart(1)
    before = stable_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    reply = bot.handle("backup web-01", actor)
    assert reply.status is Status.OK and "autostart on" in reply.headline, reply.text()
    assert bot.handle("destroy web-01", actor).status is Status.OK
    assert bot.handle("undefine web-01", actor).status is Status.OK
    restored = bot.handle("restore web-01", actor)
    assert restored.status is Status.OK, restored.text()
    back = c.lookupByUUIDString(WEB)
    assert back.name() == "web-01" and back.autostart() == 1
    assert stable_xml(back.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == before
    actions = [(r["action"], r["result"]) for r in audit_rows(bot) if r["action"] in ("backup", "restore")]
    assert actions == [("backup", "ok"), ("restore", "ok")]


def test_restore_over_an_existing_vm_is_refused_and_changes_nothing(bot: Bot, actor: Actor) -> None:
    bot.handle("backup web-01", actor)
    before = [d.name() for d in conn(bot).listAllDomains()]
    reply = bot.handle("restore web-01", actor)
    assert reply.status is Status.REFUSED
    assert "still exists" in reply.headline and "--as NEW" in reply.headline
    assert [d.name() for d in conn(bot).listAllDomains()] == before


def test_restore_as_new_gives_new_name_uuid_macs_and_volumes(bot: Bot, actor: Actor) -> None:
    c = conn(bot)
    web = c.lookupByUUIDString(WEB)
    xml = ET.fromstring(web.XMLDesc(0))
    iface = ET.SubElement(xml.find("devices"), "interface", type="network")
    ET.SubElement(iface, "mac", address="52:54:00:11:22:33")
    ET.SubElement(iface, "source", network="default")
    c.defineXML(ET.tostring(xml, encoding="unicode"))
    bot.handle("backup web-01", actor)
    reply = bot.handle("restore web-01 --as dev-web", actor)
    assert reply.status is Status.OK, reply.text()
    copy = c.lookupByName("dev-web")
    assert copy.UUIDString() != WEB
    root = ET.fromstring(copy.XMLDesc(0))
    macs = [m.get("address") for m in root.iter("mac")]
    assert macs and "52:54:00:11:22:33" not in macs
    disk = root.find("devices/disk/source").get("file")
    assert disk == f"{POOL}/{copy.UUIDString()}-disk0.img"
    assert c.storageVolLookupByPath(disk).info()[1] == 1 << 30
    assert c.lookupByUUIDString(WEB).name() == "web-01"  # the original is untouched
    assert ET.fromstring(web.XMLDesc(0)).find("devices/disk/source").get("file") == f"{POOL}/web-01.img"


def test_restore_as_a_name_that_exists_or_cannot_be_a_name_is_refused(bot: Bot, actor: Actor) -> None:
    bot.handle("backup web-01", actor)
    assert "already exists" in bot.handle("restore web-01 --as db-01", actor).headline
    bad = bot.handle('restore web-01 --as "x\ny"', actor)
    assert bad.status is Status.REFUSED and "cannot be a VM name" in bad.headline


def test_a_vm_named_dotdot_backs_up_into_files_named_by_id_and_uuid(bot: Bot, actor: Actor, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        reply = bot.handle("backup ..", actor)
    finally:
        os.umask(old)
    assert reply.status is Status.OK, reply.text()
    root = tmp_path / "backups"
    uuid = conn(bot).lookupByName("..").UUIDString()
    sets = [p for p in root.iterdir()]
    assert len(sets) == 1 and sets[0].name == only_id(reply.headline)
    names = sorted(p.name for p in sets[0].iterdir())
    assert names == sorted([MANIFEST, f"{sets[0].name}-{uuid}.xml", f"{sets[0].name}-{uuid}.meta.json"])
    assert not (tmp_path / "..").joinpath("backups").exists()
    for p in [root, *sets]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    for p in sets[0].iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    listed = bot.handle("backups ..", actor)
    assert listed.status is Status.OK and ".." in listed.lines[0]


def test_hostile_xml_in_a_backup_is_refused_naming_the_element(bot: Bot, actor: Actor, tmp_path: Path) -> None:
    set_id = only_id(bot.handle("backup db-01", actor).headline)
    c = conn(bot)
    uuid = c.lookupByName("db-01").UUIDString()
    c.lookupByName("db-01").undefine()
    path = tmp_path / "backups" / set_id / f"{set_id}-{uuid}.xml"
    root = ET.fromstring(path.read_text())
    ET.SubElement(ET.SubElement(root.find("devices"), "hostdev", mode="subsystem", type="pci"), "source")
    path.write_text(ET.tostring(root, encoding="unicode"))
    assert "does not match its checksum" in bot.handle("restore db-01", actor).headline
    manifest = json.loads((path.parent / MANIFEST).read_text())  # an attacker who rewrites the sums too
    for f in manifest["files"]:
        f["sha256"], f["size"] = sha256_file(path.parent / f["name"]), (path.parent / f["name"]).stat().st_size
    (path.parent / MANIFEST).write_text(json.dumps(manifest))
    bot.backups.catalog.reindex(bot.backups.store)
    reply = bot.handle("restore db-01", actor)
    assert reply.status is Status.REFUSED and "<domain/devices/hostdev> is not allowed" in reply.headline
    assert "db-01" not in [d.name() for d in c.listAllDomains()]


def test_verify_finds_a_flipped_byte_and_marks_the_backup_bad(bot: Bot, actor: Actor, tmp_path: Path) -> None:
    bot.config.backup_keep = {"keep_last": 5}
    first = only_id(bot.handle("backup db-01", actor).headline)
    second = only_id(bot.handle("backup db-01", actor).headline)
    assert bot.handle("verify db-01", actor).status is Status.OK
    xml = next((tmp_path / "backups" / second).glob("*.xml"))
    data = bytearray(xml.read_bytes())
    data[10] ^= 0x01
    xml.write_bytes(bytes(data))
    reply = bot.handle("verify db-01", actor)
    assert reply.status is Status.FAILED and "1 BAD" in reply.headline
    assert any(second in line and "does not match its sha256" in line for line in reply.lines)
    assert bot.backups.catalog.get(second).status == "bad"
    assert bot.backups.catalog.get(first).status == "good"
    bot.backups.catalog.delete(second)
    bot.backups.catalog.reindex(bot.backups.store)  # the manifest remembers the verdict
    assert bot.backups.catalog.get(second).status == "bad"
    conn(bot).lookupByName("db-01").undefine()
    reply = bot.handle("restore db-01", actor)
    assert reply.status is Status.OK and first in reply.headline  # the newest *good* backup
    assert "marked bad" in bot.handle(f"restore db-01 --from {second}", actor).headline


def test_verify_boot_needs_a_disk_backup_and_a_target(bot: Bot, actor: Actor) -> None:
    bot.handle("backup web-01", actor)
    assert bot.handle("verify --boot", actor).status is Status.USAGE
    reply = bot.handle("verify web-01 --boot", actor)
    assert reply.status is Status.REFUSED and "--boot needs one" in reply.headline
    assert [d.name() for d in conn(bot).listAllDomains() if d.name().startswith("vmbot-verify")] == []


def test_the_catalog_is_rebuilt_from_the_manifests(bot: Bot, actor: Actor, tmp_path: Path) -> None:
    bot.config.backup_keep = {"keep_last": 5}
    for vm in ("web-01", "db-01", ".."):
        assert bot.handle(f"backup {vm}", actor).status is Status.OK
    before = [e.line() for e in bot.backups.catalog.entries()]
    bot.backups.store.root.joinpath(".tmp-20260101T000000Z-abcdef").mkdir()  # a crashed run's leftovers
    bot.backups.catalog.db.run("DELETE FROM backups")
    assert bot.backups.catalog.reindex(bot.backups.store) == (3, 0, [])
    assert [e.line() for e in bot.backups.catalog.entries()] == before
    assert bot.backups.store.sweep() == [".tmp-20260101T000000Z-abcdef"]


def test_backup_all_and_its_usage(bot: Bot, actor: Actor) -> None:
    reply = bot.handle("backup --all --yes", actor)
    assert reply.status is Status.OK and reply.headline == "backup: 4 of 4 done", reply.text()
    assert bot.handle("backup web-01 --all", actor).status is Status.USAGE
    assert bot.handle("backup", actor).status is Status.USAGE


def test_backups_are_refused_while_frozen_and_without_a_store(
    bot: Bot, make_bot: Callable[..., Bot], actor: Actor
) -> None:
    bot.handle("freeze kvm01", actor)
    assert "frozen" in bot.handle("backup web-01", actor).text()
    bare = make_bot(fleet=fleet())
    reply = bare.handle("backup web-01", actor)
    assert reply.status is Status.REFUSED and "set [backups] dir" in reply.text()
    assert "set [backups] dir" in bare.handle("prune", actor).headline


def test_prune_keeps_what_the_rules_say_and_dry_run_changes_nothing(bot: Bot, actor: Actor) -> None:
    bot.config.backup_keep = {"keep_last": 2, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    ids = [only_id(bot.handle("backup db-01", actor).headline) for _ in range(3)]
    assert [e.id for e in bot.backups.catalog.entries()] == ids[::-1][:2]  # retention ran after the backup
    bot.config.backup_keep = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    dry = bot.handle("prune --dry-run", actor)
    assert dry.status is Status.OK and len(dry.lines) == 1 and ids[1] in dry.lines[0]
    assert len(bot.backups.catalog.entries()) == 2
    done = bot.handle("prune", actor)
    assert done.status is Status.OK and [e.id for e in bot.backups.catalog.entries()] == [ids[2]]
    assert not (bot.backups.store.root / ids[1]).exists()
    assert bot.handle("prune", actor).headline.startswith("nothing to prune")


POLICY = """\
roles:
  viewer: [list, state, backups]
  root: ["*"]
  webadmin: [viewer, backup, restore, undefine, destroy]
grants:
  - who: [UROOT, UROOT2]
    role: root
  - who: [UWEB, UWEB2]
    role: webadmin
    vms: ["web-*"]
"""


def policy_bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    """The test fleet with backups on and POLICY (root, webadmin on web-*) written and loaded."""
    (tmp_path / "policy.yml").write_text(POLICY)
    return make_bot(
        fleet=fleet(),
        volumes=VOLUMES,
        policy=load_policy(tmp_path / "policy.yml"),
        backups_dir=tmp_path / "backups",
        backup_pools=("default",),
    )


def test_restore_and_prune_wait_for_approval_and_the_policy_sees_both_names(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    bot = policy_bot(make_bot, tmp_path)
    root, web, web2 = Actor("UROOT", "C0"), Actor("UWEB", "C0"), Actor("UWEB2", "C0")
    assert bot.handle("backup web-01", web).status is Status.OK
    refused = bot.handle("restore web-01 --as dev-web", web)
    assert refused.status is Status.REFUSED and "dev-web" in refused.headline  # no grant on the new name
    pending = bot.handle("restore web-01 --as web-copy", root)  # `*` gains restore, which waits
    assert pending.status is Status.PENDING, pending.text()
    assert "web-copy" not in [d.name() for d in conn(bot).listAllDomains()]
    done = bot.handle(f"approve {pending.request_id}", web2)
    assert done.status is Status.OK and "restored as web-copy" in done.headline, done.text()
    assert "web-copy" in [d.name() for d in conn(bot).listAllDomains()]
    bot.config.backup_keep = {"keep_last": 5}
    bot.handle("backup db-01", root)
    bot.handle("backup db-01", root)
    bot.config.backup_keep = {"keep_last": 1}
    assert "refused" in bot.handle("prune", web).headline  # db-01 is not a web-* VM
    asked = bot.handle("prune", root)
    assert asked.status is Status.PENDING and len(bot.backups.catalog.entries(name="db-01")) == 2
    assert bot.handle(f"approve {asked.request_id}", web2).status is Status.REFUSED  # no grant on db-01
    pruned = bot.handle(f"approve {asked.request_id}", Actor("UROOT2", "C0"))
    assert pruned.status is Status.OK and "removed 1 of 1" in pruned.headline, pruned.text()
    assert len(bot.backups.catalog.entries(name="db-01")) == 1


def test_vmbot_backups_reindex_rebuilds_the_catalog(tmp_path: Path) -> None:
    uri = write_fleet(tmp_path / "kvm01.xml", [Vm("web-01", "shut off"), Vm("..", "shut off")])
    config = tmp_path / "vmbot.toml"
    config.write_text(
        f'[hosts]\nkvm01 = "{uri}"\n[store]\npath = "vmbot.db"\n[backups]\ndir = "backups"\n'
        '[policy]\nfile = "policy.yml"\n[terminal]\nallow_as = true\n'
    )
    (tmp_path / "policy.yml").write_text(POLICY)
    run = lambda *a: subprocess.run([vmbot_exe(), *a], capture_output=True, text=True, timeout=60, check=False)  # noqa: E731
    for vm in ("web-01", ".."):
        made = run("exec", "--config", str(config), "--as", "UROOT", "--", f"/vm backup {vm}")
        assert made.returncode == 0, made.stdout + made.stderr
    db = sqlite3.connect(tmp_path / "vmbot.db")
    db.execute("DELETE FROM backups")
    db.commit()
    db.close()
    done = run("backups", "reindex", "--config", str(config))
    assert done.returncode == 0 and "2 backup set(s)" in done.stdout, done.stdout + done.stderr
    listed = run("exec", "--config", str(config), "--as", "UROOT", "--", "/vm backups")
    assert "2 backup(s)" in listed.stdout and "kvm01/.." in listed.stdout
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[hosts]\nkvm01 = "{uri}"\n')
    refused = run("backups", "reindex", "--config", str(bare))
    assert refused.returncode == 2 and "set [backups] dir" in refused.stderr


def test_scheduled_config_backup_runs_as_the_scheduler_and_feeds_the_backup_report(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from bot.schedule.settings import Schedule
    from tests.test_schedule import Clock

    (tmp_path / "policy.yml").write_text(POLICY + "  - who: [vmbot:scheduler]\n    role: root\n")
    bot = make_bot(
        fleet=fleet(),
        volumes=VOLUMES,
        policy=load_policy(tmp_path / "policy.yml"),
        backups_dir=tmp_path / "backups",
        schedule=Schedule("UTC", {"config_backup": "0 2 * * *"}),
    )
    clock = Clock(datetime(2026, 11, 27, 1, 0, tzinfo=UTC))
    sched = bot.desk.scheduler(lambda: True, clock=clock, inline=True)
    sched.tick()
    clock.set(datetime(2026, 11, 27, 2, 0, tzinfo=UTC))
    assert sched.tick() == ["config_backup"]
    assert len(bot.backups.catalog.entries()) == 4  # every VM on both hosts
    rows = [r for r in audit_rows(bot) if r["action"] == "backup"]
    assert rows and all(r["slack_user"] == "vmbot:scheduler" and r["result"] == "ok" for r in rows)
    report = bot.handle("report backups", Actor("UROOT", "C0"))
    assert "kvm01/web-01 backups: never verified" in report.text(), report.text()  # it reads this catalog


def test_the_new_uuid_must_be_unused_on_every_host_and_every_host_must_answer() -> None:
    from bot.backup.restore import RestoreRefused, check_uuid_unused

    check_uuid_unused({"kvm01": False, "kvm02": False}, "u")
    with pytest.raises(RestoreRefused, match="already used on kvm02"):
        check_uuid_unused({"kvm01": False, "kvm02": True}, "u")
    with pytest.raises(RestoreRefused, match="cannot check the new UUID u on kvm02"):
        check_uuid_unused({"kvm01": False, "kvm02": TimeoutError("no answer")}, "u")


def test_restore_dry_run_shows_the_plan_and_changes_nothing(bot: Bot, actor: Actor) -> None:
    bot.handle("backup web-01", actor)
    before = sorted(d.name() for d in conn(bot).listAllDomains())
    reply = bot.handle("restore web-01 --as web-02 --dry-run", actor)
    assert reply.status is Status.OK and reply.headline.startswith("dry run: nothing was changed"), reply.text()
    assert "define kvm01/web-02 (new UUID" in reply.lines[0] and "1 new volume(s)" in reply.lines[0]
    assert sorted(d.name() for d in conn(bot).listAllDomains()) == before
    assert conn(bot).storagePoolLookupByName("default").numOfVolumes() == len(VOLUMES["kvm01"])
