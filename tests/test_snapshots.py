"""Snapshots on the test driver: create / list / revert / delete round trip, the plain-language limits,
revert and snapshot-delete waiting for an approval by default, and names that must not get through."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from bot.reply import Status
from bot.service import Bot
from tests.conftest import Vm, Volume
from tests.policyrig import make_policy, on_host, rows, state, who

POLICY = """\
roles:
  admin: [list, state, info, start, destroy, snapshot, snapshots, revert, snapshot-delete, audit]
grants:
  - who: [UREQ, UADM]
    role: admin
"""
FLEET = {
    "kvm01": [
        Vm("db-01", "running", disks=["/fleet-pool/db.qcow2"], disk_format="qcow2"),
        Vm("raw-01", "shut off", disks=["/fleet-pool/raw.img"], disk_format="raw"),
        Vm("unstated", "shut off", disks=["/fleet-pool/u.img"]),
        Vm("uefi-01", "shut off", disks=["/fleet-pool/uefi.qcow2"], disk_format="qcow2", pflash=True),
    ]
}


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return make_bot(fleet=FLEET, policy=make_policy(tmp_path, POLICY), volumes={"kvm01": [Volume("db.qcow2")]})


def snapshot_names(bot: Bot, vm: str) -> list[str]:
    return on_host(bot, "kvm01", lambda c: sorted(s.getName() for s in c.lookupByName(vm).listAllSnapshots(0)))  # type: ignore[return-value]


def approve(bot: Bot, reply_text: str, request_id: str | None) -> str:
    assert request_id, reply_text
    done = bot.approve(request_id, who("UADM"))
    assert done.status is Status.OK, done.text()
    return done.text()


def test_round_trip_create_list_revert_delete(bot: Bot) -> None:
    taken = bot.handle("snapshot db-01 before-upgrade --description 'pre 2.0'", who("UREQ"))
    assert taken.status is Status.OK, taken.text()
    assert "before-upgrade taken: disks and memory" in taken.text()
    on_host(bot, "kvm01", lambda c: c.lookupByName("db-01").destroy())
    assert state(bot, "db-01") == "shut off"
    listed = bot.handle("snapshots db-01", who("UREQ")).text()
    assert "1 snapshot" in listed and "before-upgrade" in listed and "pre 2.0" in listed and "running" in listed
    pending = bot.handle("revert db-01 before-upgrade", who("UREQ"))
    assert pending.status is Status.PENDING and state(bot, "db-01") == "shut off"
    assert "revert db-01 on kvm01 to snapshot before-upgrade, shut off" in pending.text()
    assert "everything written to its disks since that snapshot is lost" in pending.text()
    assert "reverted to snapshot before-upgrade; db-01 is running" in approve(bot, pending.text(), pending.request_id)
    assert state(bot, "db-01") == "running"
    gone = bot.handle("snapshot-delete db-01 before-upgrade", who("UREQ"))
    assert gone.status is Status.PENDING and snapshot_names(bot, "db-01") == ["before-upgrade"]
    approve(bot, gone.text(), gone.request_id)
    assert snapshot_names(bot, "db-01") == []
    actions = [r["action"] for r in rows(bot, "decision in ('allowed', 'needs approval')")]
    assert actions.count("revert") == 2 and actions.count("snapshot-delete") == 2  # request row + run row


def test_a_running_vm_is_told_it_pauses_and_default_names_are_times(bot: Bot) -> None:
    said: list[str] = []
    reply = bot.handle("snapshot db-01", who("UREQ"), said.append)
    assert reply.status is Status.OK
    assert said == ["db-01 is running: it pauses while its memory is saved, then carries on"]
    (name,) = snapshot_names(bot, "db-01")
    assert name.startswith("snap-20") and name in reply.text()


def test_revert_preview_of_a_running_vm_says_memory_is_lost(bot: Bot) -> None:
    bot.handle("snapshot db-01 s1", who("UREQ"))
    reply = bot.handle("revert db-01 s1 --dry-run", who("UREQ"))
    assert reply.status is Status.OK and "would wait for 1 approval" in reply.text()
    assert "its memory now (running) and everything written to its disks since that snapshot are lost" in reply.text()


@pytest.mark.parametrize(
    ("vm", "why"),
    [
        ("raw-01", "raw-01 has a writable raw disk vda: internal snapshots need every writable disk in qcow2"),
        ("unstated", "unstated has a writable raw (no format stated) disk vda"),
        ("uefi-01", "uefi-01 boots UEFI firmware from pflash"),
    ],
)
def test_vms_that_cannot_take_internal_snapshots_are_told_why(bot: Bot, vm: str, why: str) -> None:
    reply = bot.handle(f"snapshot {vm} s1", who("UREQ"))
    assert reply.status is Status.REFUSED and why in reply.headline
    assert "libvirt 9 / QEMU 7" in reply.headline and snapshot_names(bot, vm) == []
    assert rows(bot, "action = 'snapshot'")[-1]["result"] == "refused"


def test_limits_are_in_the_help(bot: Bot) -> None:
    text = bot.handle("help", who("UREQ")).text()
    assert "not a writable raw disk, not UEFI/pflash" in text and "pauses while its memory is saved" in text
    assert "external snapshots cannot be reverted" in text


def test_external_snapshots_are_refused_plainly(bot: Bot) -> None:
    external = ET.Element("domainsnapshot")
    ET.SubElement(external, "name").text = "ext"
    ET.SubElement(external, "state").text = "shutoff"
    ET.SubElement(external, "creationTime").text = "1700000000"
    ET.SubElement(external, "memory", snapshot="no")
    disk = ET.SubElement(ET.SubElement(external, "disks"), "disk", name="vda", snapshot="external")
    ET.SubElement(disk, "source", file="/fleet-pool/db.ext")

    def redefine(conn: libvirt.virConnect) -> None:  # as `virsh snapshot-create --redefine` would
        dom = conn.lookupByName("db-01")
        external.append(ET.fromstring(dom.XMLDesc(0)))
        dom.snapshotCreateXML(ET.tostring(external, encoding="unicode"), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)

    on_host(bot, "kvm01", redefine)
    assert "ext" in bot.handle("snapshots db-01", who("UREQ")).text()
    for text in ("revert db-01 ext", "snapshot-delete db-01 ext"):
        reply = bot.handle(text, who("UREQ"))
        assert reply.status is Status.REFUSED and "libvirt 9 cannot revert or delete external snapshots" in reply.text()
    assert snapshot_names(bot, "db-01") == ["ext"] and state(bot, "db-01") == "running"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("snapshot db-01 'a\nb'", "must not contain control characters"),
        ("snapshot db-01 ..", "must not be '.' or '..'"),
        ("snapshot db-01 a/b", "must not contain '/'"),
        ("snapshot db-01 s --description 'two\nlines'", "one printable line"),
        ("revert db-01", "takes a VM and a snapshot name"),
        ("snapshot db-01 a b", "takes a VM and an optional name"),
    ],
)
def test_bad_names_are_usage_errors_and_change_nothing(bot: Bot, text: str, why: str) -> None:
    reply = bot.handle(text, who("UREQ"))
    assert reply.status is Status.USAGE and why in reply.headline and "\n" not in reply.headline
    assert snapshot_names(bot, "db-01") == []


def test_unknown_snapshot_and_taken_name_are_refused_before_approval(bot: Bot) -> None:
    bot.handle("snapshot db-01 s1", who("UREQ"))
    missing = bot.handle("revert db-01 s2", who("UREQ"))
    assert missing.status is Status.REFUSED and "has no snapshot named 's2' (its snapshots: s1)" in missing.text()
    assert bot.pending_requests() == []
    again = bot.handle("snapshot db-01 s1", who("UREQ"))
    assert again.status is Status.REFUSED and "already has a snapshot named 's1'" in again.text()


def test_a_grant_without_revert_cannot_revert(make_bot: Callable[..., Bot], tmp_path: Path) -> None:
    policy = "roles:\n  snapper: [snapshot, snapshots]\ngrants:\n  - who: [UOPS]\n    role: snapper\n"
    bot = make_bot(fleet=FLEET, policy=make_policy(tmp_path, policy))
    assert bot.handle("snapshot db-01 s1", who("UOPS")).status is Status.OK
    reply = bot.handle("revert db-01 s1", who("UOPS"))
    assert reply.status is Status.REFUSED and "does not include revert" in reply.text()
