"""Full clones on the test driver: virt-clone's semantics, cleanup when a copy fails or is cancelled,
policy on both sides, batches with one audit row each, hostile names."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from bot.reply import Status
from bot.service import Bot
from handlers.cli import main
from tests.conftest import Vm, Volume, domain_element, write_fleet
from tests.policyrig import make_policy, on_host, rows, who

POOL = "/fleet-pool"
FLEET = {
    "kvm01": [
        Vm("prod-db", "shut off", disks=[f"{POOL}/prod-db.qcow2"], disk_format="qcow2", macs=["52:54:00:00:00:01"]),
        Vm("dev-base", "shut off", disks=[f"{POOL}/dev-a.qcow2", f"{POOL}/dev-b.qcow2"], disk_format="qcow2"),
        Vm("dev-live", "running", disks=[f"{POOL}/dev-live.qcow2"], disk_format="qcow2"),
        Vm("dev-stray", "shut off", disks=["/srv/elsewhere/stray.qcow2"], disk_format="qcow2"),
    ]
}
VOLUMES = {
    "kvm01": [Volume(n, format="qcow2") for n in ("prod-db.qcow2", "dev-a.qcow2", "dev-b.qcow2", "dev-live.qcow2")]
}
POLICY = """\
roles:
  cloner: [clone, list, state]
grants:
  - who: [UDEV]
    role: cloner
    vms: ["dev-*"]
  - who: [UPROD, UADM]
    role: cloner
    vms: ["prod-*", "dev-*"]
"""


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return make_bot(fleet=FLEET, volumes=VOLUMES, policy=make_policy(tmp_path, POLICY))


def xml_of(bot: Bot, name: str) -> ET.Element:
    return ET.fromstring(on_host(bot, "kvm01", lambda c: c.lookupByName(name).XMLDesc(0)))  # type: ignore[arg-type]


def volumes(bot: Bot) -> set[str]:
    return set(on_host(bot, "kvm01", lambda c: c.storagePoolLookupByName("default").listVolumes()))  # type: ignore[arg-type]


def domains(bot: Bot) -> set[str]:
    return {d.name() for d in on_host(bot, "kvm01", lambda c: c.listAllDomains(0))}  # type: ignore[union-attr]


def test_a_clone_gets_new_uuid_macs_and_its_own_volumes_and_the_source_is_unchanged(bot: Bot) -> None:
    before = ET.tostring(xml_of(bot, "prod-db"), encoding="unicode")
    reply = bot.handle("clone prod-db prod-db-copy", who("UPROD"))
    assert reply.status is Status.OK and "cloned from prod-db (1 disk(s) copied)" in reply.text(), reply.text()
    src, new = xml_of(bot, "prod-db"), xml_of(bot, "prod-db-copy")
    assert ET.tostring(src, encoding="unicode") == before
    new_uuid = new.findtext("uuid")
    assert new_uuid and new_uuid != src.findtext("uuid")
    mac = new.find("devices/interface/mac")
    assert mac is not None and mac.get("address") not in ("52:54:00:00:00:01", None)
    assert mac.get("address", "").startswith("52:54:00:")
    path = new.find("devices/disk/source").get("file")  # type: ignore[union-attr]
    assert path == f"{POOL}/{new_uuid}-vda.qcow2" and "prod-db" not in path  # named by UUID, never by name
    assert f"{new_uuid}-vda.qcow2" in volumes(bot)
    (row,) = rows(bot, "action = 'clone' and decision = 'allowed'")
    assert row["vm_uuid"] == new_uuid and row["vm_name"] == "prod-db-copy" and row["result"] == "ok"


def test_progress_is_said_while_disks_copy(bot: Bot) -> None:
    said: list[str] = []
    assert bot.handle("clone dev-base dev-x", who("UDEV"), said.append).status is Status.OK
    assert [s.split(":")[0] for s in said] == [
        "copying disk 1 of 2 for dev-x",
        "copying disk 2 of 2 for dev-x",
        "defining dev-x",
    ]


def test_a_clone_that_fails_halfway_leaves_no_domain_and_no_volume(bot: Bot) -> None:
    before_vols, before_doms = volumes(bot), domains(bot)

    def break_second_copy(line: str) -> None:  # the second source disk disappears while the first copies
        if line.startswith("copying disk 2 of 2"):
            on_host(bot, "kvm01", lambda c: c.storageVolLookupByPath(f"{POOL}/dev-b.qcow2").delete(0))

    reply = bot.handle("clone dev-base dev-x", who("UDEV"), break_second_copy)
    assert reply.status is Status.FAILED and "what was made so far was removed" in reply.text(), reply.text()
    assert domains(bot) == before_doms and volumes(bot) == before_vols - {"dev-b.qcow2"}
    (row,) = rows(bot, "action = 'clone' and decision = 'allowed'")
    assert row["result"] == "failed" and row["error_id"]


def test_a_cancelled_clone_is_taken_back(bot: Bot) -> None:
    before_vols, before_doms = volumes(bot), domains(bot)

    def progress(line: str) -> None:
        if line.startswith("copying disk 1"):
            progress.cancelled.set()  # type: ignore[attr-defined]

    progress.cancelled = threading.Event()  # type: ignore[attr-defined]
    reply = bot.handle("clone dev-base dev-x", who("UDEV"), progress)
    assert reply.status is Status.REFUSED and "cancelled; what was made so far was removed" in reply.text()
    assert domains(bot) == before_doms and volumes(bot) == before_vols


def test_a_name_taken_while_copying_removes_the_copies(bot: Bot) -> None:
    before = volumes(bot)

    def race(line: str) -> None:  # someone defines the name with virsh during the copy
        if line.startswith("defining"):
            xml = ET.tostring(domain_element(Vm("dev-x", "shut off")), encoding="unicode")
            on_host(bot, "kvm01", lambda c: c.defineXML(xml))

    reply = bot.handle("clone dev-base dev-x", who("UDEV"), race)
    assert reply.status is Status.FAILED and "removed" in reply.text()
    assert volumes(bot) == before


def test_policy_covers_both_the_source_and_the_new_name(bot: Bot) -> None:
    before = domains(bot)
    out = bot.handle("clone prod-db dev-x", who("UDEV"))
    assert out.status is Status.REFUSED and "no grant lets UDEV clone kvm01/prod-db" in out.text()
    into = bot.handle("clone dev-base prod-x", who("UDEV"))
    assert into.status is Status.REFUSED and "no grant lets UDEV clone new VM kvm01/prod-x" in into.text()
    assert domains(bot) == before
    assert bot.handle("clone prod-db dev-x", who("UPROD")).status is Status.OK
    assert bot.handle("clone dev-base dev-y", who("UDEV")).status is Status.OK


def test_a_batch_is_one_operation_per_new_vm_and_wants_yes_above_the_limit(bot: Bot) -> None:
    six = " ".join(f"dev-{i}" for i in range(6))
    refused = bot.handle(f"clone dev-base {six}", who("UDEV"))
    assert refused.status is Status.REFUSED and "add --yes to make all 6" in refused.text()
    five = " ".join(f"dev-{i}" for i in range(5))
    reply = bot.handle(f"clone dev-base {five}", who("UDEV"))
    assert reply.status is Status.OK and reply.headline == "clone: 5 of 5 made", reply.text()
    made = rows(bot, "action = 'clone' and decision = 'allowed'")
    assert sorted(r["vm_name"] for r in made) == [f"dev-{i}" for i in range(5)]
    assert len({r["vm_uuid"] for r in made}) == 5 and {r["result"] for r in made} == {"ok"}
    assert len({r["command_id"] for r in made}) == 1


def test_the_source_must_be_shut_off_and_names_must_be_new(bot: Bot) -> None:
    running = bot.handle("clone dev-live dev-x", who("UDEV"))
    assert running.status is Status.REFUSED and "dev-live is running; clone applies to a shut-off VM" in running.text()
    taken = bot.handle("clone dev-base dev-live", who("UDEV"))
    assert taken.status is Status.REFUSED and "dev-live already exists on kvm01" in taken.text()
    twice = bot.handle("clone dev-base dev-x dev-x", who("UDEV"))
    assert twice.status is Status.USAGE
    stray = bot.handle("clone dev-stray dev-x", who("UDEV"))
    assert stray.status is Status.REFUSED and "not a volume of a storage pool" in stray.text()


@pytest.mark.parametrize(
    ("new", "why"),
    [("'a/b'", "must not contain '/'"), ("..", "must not be '.' or '..'"), ("'x\ny'", "control characters"),
     ("' lead'", "must not be empty or start or end with a space")],
)  # fmt: skip
def test_hostile_new_names_are_usage_errors(bot: Bot, new: str, why: str) -> None:
    before = domains(bot)
    reply = bot.handle(f"clone dev-base {new}", who("UDEV"))
    assert reply.status is Status.USAGE and why in reply.headline and domains(bot) == before


def test_odd_but_legal_names_are_kept_verbatim(bot: Bot) -> None:
    reply = bot.handle("clone dev-base 'dev-<!channel> *'", who("UDEV"))
    assert reply.status is Status.OK, reply.text()
    assert "dev-<!channel> *" in domains(bot)


def test_read_only_and_shareable_disks_are_shared(bot: Bot) -> None:
    def add_shared(conn: libvirt.virConnect) -> None:
        dom = conn.lookupByName("dev-base")
        root = ET.fromstring(dom.XMLDesc(0))
        devices = root.find("devices")
        for dev, extra in (("vdc", "readonly"), ("vdd", "shareable")):
            disk = ET.SubElement(devices, "disk", type="file", device="disk")  # type: ignore[arg-type]
            ET.SubElement(disk, "source", file=f"{POOL}/{dev}.img")
            ET.SubElement(disk, "target", dev=dev, bus="virtio")
            ET.SubElement(disk, extra)
        conn.defineXML(ET.tostring(root, encoding="unicode"))

    on_host(bot, "kvm01", add_shared)
    reply = bot.handle("clone dev-base dev-x", who("UDEV"))
    assert "(2 disk(s) copied, 2 shared)" in reply.text(), reply.text()
    sources = [d.get("file") for d in xml_of(bot, "dev-x").iterfind("devices/disk/source")]
    assert sources[2:] == [f"{POOL}/vdc.img", f"{POOL}/vdd.img"]


def test_start_starts_each_clone(bot: Bot) -> None:
    reply = bot.handle("clone dev-base dev-x --start", who("UDEV"))
    assert reply.status is Status.OK and reply.text().endswith("; started")
    assert on_host(bot, "kvm01", lambda c: c.lookupByName("dev-x").isActive()) == 1


def test_a_clone_waiting_for_approval_makes_nothing_until_approved(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    policy = POLICY + "approvals:\n  - actions: [clone]\n    count: 1\n"
    bot = make_bot(fleet=FLEET, volumes=VOLUMES, policy=make_policy(tmp_path, policy))
    pending = bot.handle("clone dev-base dev-x", who("UDEV"))
    assert pending.status is Status.PENDING and "clone dev-base on kvm01 into dev-x" in pending.text()
    assert "dev-x" not in domains(bot)
    done = bot.approve(pending.request_id or "", who("UADM"))
    assert done.status is Status.OK and "cloned from dev-base" in done.text(), done.text()
    assert "dev-x" in domains(bot)


def test_policy_explain_shows_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = write_fleet(tmp_path / "kvm01.xml", FLEET["kvm01"], volumes=VOLUMES["kvm01"])
    (tmp_path / "policy.yml").write_text(POLICY)
    cfg = tmp_path / "vmbot.toml"
    cfg.write_text(f'[hosts]\nkvm01 = "{uri}"\n[policy]\nfile = "policy.yml"\n[store]\npath = "v.db"\n')
    explain = ["policy", "explain", "--as", "UDEV", "--config", str(cfg), "--"]
    assert main([*explain, "/vm clone prod-db dev-x"]) == 1
    out = capsys.readouterr().out
    assert "clone kvm01/prod-db, new VM kvm01/dev-x as UDEV" in out and "DENIED" in out
    assert main([*explain, "/vm clone dev-base dev-x dev-y"]) == 0
    assert "ALLOWED" in capsys.readouterr().out


def test_freezes_and_locks_hold_for_clones(bot: Bot) -> None:
    bot.freezes.freeze("kvm01", "UADM", "maintenance")
    frozen = bot.handle("clone dev-base dev-x", who("UDEV"))
    assert frozen.status is Status.REFUSED and "maintenance" in frozen.text() and "dev-x" not in domains(bot)
    bot.freezes.thaw("kvm01")
    (ref,) = bot.fleet.resolve(["dev-base"]).refs
    with bot.locks.hold(ref.host, ref.uuid, ref.name, "snapshot", "UOTHER"):
        locked = bot.handle("clone dev-base dev-x", who("UDEV"))
    assert locked.status is Status.REFUSED and "UOTHER" in locked.text() and "dev-x" not in domains(bot)
    assert rows(bot, "action = 'clone' and decision = 'allowed'")[-1]["result"] == "refused"


def test_a_uefi_clone_gets_fresh_nvram(bot: Bot) -> None:
    def make_uefi(conn: libvirt.virConnect) -> None:
        root = ET.fromstring(conn.lookupByName("dev-base").XMLDesc(0))
        os_el = root.find("os")
        ET.SubElement(os_el, "loader", readonly="yes", type="pflash").text = "/usr/share/OVMF/OVMF_CODE.fd"  # type: ignore[arg-type]
        ET.SubElement(os_el, "nvram").text = "/var/lib/libvirt/qemu/nvram/dev-base_VARS.fd"  # type: ignore[arg-type]
        conn.defineXML(ET.tostring(root, encoding="unicode"))

    on_host(bot, "kvm01", make_uefi)
    reply = bot.handle("clone dev-base dev-x", who("UDEV"))
    assert reply.status is Status.OK, reply.text()
    assert xml_of(bot, "dev-x").findtext("os/nvram") != "/var/lib/libvirt/qemu/nvram/dev-base_VARS.fd"
    assert xml_of(bot, "dev-x").findtext("os/loader") == "/usr/share/OVMF/OVMF_CODE.fd"


def test_h2_a_dev_scoped_approver_cannot_approve_a_clone_into_a_prod_name(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    policy = POLICY + "approvals:\n  - actions: [clone]\n    count: 1\n"
    bot = make_bot(fleet=FLEET, volumes=VOLUMES, policy=make_policy(tmp_path, policy))
    pending = bot.handle("clone dev-base prod-x", who("UPROD"))  # UPROD may create prod-x; UDEV may not
    assert pending.status is Status.PENDING, pending.text()
    answer = bot.approve(pending.request_id or "", who("UDEV"))
    assert "prod-x" not in domains(bot), answer.text()
    assert answer.status is Status.REFUSED
