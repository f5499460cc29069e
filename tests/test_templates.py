"""Templates on the test driver: marks, versions in order, a template never starts, linked clones are
overlays only from templates, and a base with overlays is never unmarked or deleted."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.clone import metadata
from bot.reply import Status
from bot.service import Bot
from tests.conftest import Vm, Volume
from tests.policyrig import make_policy, on_host, rows, who

POOL = "/fleet-pool"
FLEET = {
    "kvm01": [
        Vm("base", "shut off", disks=[f"{POOL}/base.qcow2"], disk_format="qcow2"),
        Vm("dev-box", "shut off", disks=[f"{POOL}/dev-box.qcow2"], disk_format="qcow2"),
        Vm("raw-base", "shut off", disks=[f"{POOL}/raw.img"], disk_format="raw"),
    ]
}
VOLUMES = {"kvm01": [Volume("base.qcow2", format="qcow2"), Volume("dev-box.qcow2", format="qcow2"),
                     Volume("raw.img", format="raw")]}  # fmt: skip
POLICY = """\
roles:
  builder: [clone, template, templates, start, autostart, undefine, list, state, snapshot]
grants:
  - who: [UADM]
    role: builder
  - who: [UDEV]
    role: builder
    vms: ["dev-*"]
"""


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return make_bot(fleet=FLEET, volumes=VOLUMES, policy=make_policy(tmp_path, POLICY))


def ok(bot: Bot, text: str, user: str = "UADM") -> str:
    reply = bot.handle(text, who(user))
    assert reply.status is Status.OK, reply.text()
    return reply.text()


def xml_of(bot: Bot, name: str) -> ET.Element:
    return ET.fromstring(on_host(bot, "kvm01", lambda c: c.lookupByName(name).XMLDesc(0)))  # type: ignore[arg-type]


def test_mark_turns_autostart_off_makes_disks_read_only_and_the_template_never_starts(bot: Bot) -> None:
    on_host(bot, "kvm01", lambda c: c.lookupByName("base").setAutostart(1))
    said = ok(bot, "template mark base")
    assert "version 1 of template base: autostart off, 1 disk(s) read-only" in said
    root = xml_of(bot, "base")
    assert root.find("devices/disk/readonly") is not None
    mark = metadata.template(root)
    assert mark and (mark.name, mark.version, mark.marked) == ("base", 1, ("vda",))
    assert on_host(bot, "kvm01", lambda c: c.lookupByName("base").autostart()) == 0
    for text in ("start base", "autostart base"):
        reply = bot.handle(text, who("UADM"))
        assert reply.status is Status.REFUSED and "a template never starts" in reply.text()
        assert "template unmark base" in reply.text()
    assert on_host(bot, "kvm01", lambda c: c.lookupByName("base").isActive()) == 0


def test_versions_list_in_order_and_clone_picks_the_newest_or_the_one_asked(bot: Bot) -> None:
    for _ in range(3):
        ok(bot, "template create golden --from base")
    listed = bot.handle("templates", who("UADM")).text()
    lines = [line for line in listed.splitlines() if line.startswith("golden v")]
    assert [line.split(":")[0] for line in lines] == ["golden v1", "golden v2", "golden v3"]
    assert all("from kvm01/base" in line and "used of 1 GiB" in line for line in lines)
    assert listed.splitlines()[0] == "1 template(s), 3 version(s)"
    ok(bot, "clone golden newest")
    ok(bot, "clone golden oldest --version 1")
    assert metadata.clone(xml_of(bot, "newest")).version == 3  # type: ignore[union-attr]
    assert metadata.clone(xml_of(bot, "oldest")).version == 1  # type: ignore[union-attr]
    assert metadata.template(xml_of(bot, "newest")) is None  # a copy of a template is not a template
    assert xml_of(bot, "newest").find("devices/disk/readonly") is None  # and its disk is writable
    missing = bot.handle("clone golden x --version 9", who("UADM"))
    assert missing.status is Status.REFUSED and "has no version 9 (versions: 1, 2, 3)" in missing.text()
    assert metadata.template(xml_of(bot, "base")) is None  # template create left its source as it was


def test_a_linked_clone_is_a_qcow2_overlay_with_its_backing_format_stated(bot: Bot) -> None:
    ok(bot, "template mark base")
    ok(bot, "clone base dev-linked --linked")
    disk = xml_of(bot, "dev-linked").find("devices/disk")
    assert disk is not None and disk.find("readonly") is None
    backing = disk.find("backingStore")
    assert backing is not None and backing.find("source").get("file") == f"{POOL}/base.qcow2"  # type: ignore[union-attr]
    assert backing.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    path = disk.find("source").get("file")  # type: ignore[union-attr]
    vol = ET.fromstring(on_host(bot, "kvm01", lambda c: c.storageVolLookupByPath(path).XMLDesc(0)))  # type: ignore[arg-type]
    assert vol.findtext("backingStore/path") == f"{POOL}/base.qcow2"
    assert vol.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert metadata.clone(xml_of(bot, "dev-linked")).linked  # type: ignore[union-attr]


def test_linked_clones_only_from_templates_with_qcow2_disks(bot: Bot) -> None:
    plain = bot.handle("clone dev-box dev-x --linked", who("UADM"))
    assert plain.status is Status.REFUSED and "--linked clones only from a template" in plain.text()
    ok(bot, "template mark raw-base")
    raw = bot.handle("clone raw-base dev-x --linked", who("UADM"))
    assert raw.status is Status.REFUSED and "a linked clone needs the template's disks in qcow2" in raw.text()


def test_a_base_with_linked_clones_is_never_unmarked_or_deleted(bot: Bot) -> None:
    ok(bot, "template mark base")
    ok(bot, "clone base dev-l1 dev-l2 --linked")
    for text in ("template unmark base", "undefine base --remove-storage"):
        reply = bot.handle(text, who("UADM"))
        assert reply.status is Status.REFUSED and "dev-l1, dev-l2" in reply.text(), reply.text()
    assert metadata.template(xml_of(bot, "base"))
    assert "base.qcow2" in on_host(bot, "kvm01", lambda c: c.storagePoolLookupByName("default").listVolumes())  # type: ignore[operator]
    ok(bot, "undefine dev-l1 --remove-storage")
    ok(bot, "undefine dev-l2 --remove-storage")
    assert "no longer a template" in ok(bot, "template unmark base")
    assert xml_of(bot, "base").find("devices/disk/readonly") is None and metadata.template(xml_of(bot, "base")) is None


def test_template_create_checks_both_sides_of_the_policy(bot: Bot) -> None:
    refused = bot.handle("template create prod-golden --from dev-box", who("UDEV"))
    assert refused.status is Status.REFUSED and "new VM kvm01/prod-golden-v1" in refused.text()
    assert "version 1 of template dev-golden" in ok(bot, "template create dev-golden --from dev-box", "UDEV")


def test_templates_lists_only_the_template_vms_the_requester_may_list(bot: Bot) -> None:
    ok(bot, "template create golden --from base")
    ok(bot, "template create dev-golden --from dev-box", "UDEV")
    assert "golden v1" in ok(bot, "templates") and "dev-golden v1" in ok(bot, "templates")
    seen = ok(bot, "templates", "UDEV")
    assert "dev-golden v1" in seen and "\ngolden v1" not in seen and "kvm01/golden-v1" not in seen
    assert seen.splitlines()[0] == "1 template(s), 1 version(s)"


def test_a_batch_of_five_from_one_template_is_five_audit_rows(bot: Bot) -> None:
    ok(bot, "template mark base")
    said = ok(bot, "clone base web-1 web-2 web-3 web-4 web-5 --linked")
    assert said.startswith("clone: 5 of 5 made")
    made = rows(bot, "action = 'clone' and decision = 'allowed'")
    assert [r["vm_name"] for r in made] == [f"web-{i}" for i in range(1, 6)]
    assert len({r["vm_uuid"] for r in made}) == 5 and all(r["result"] == "ok" for r in made)


def test_template_usage_errors(bot: Bot) -> None:
    for text in ("template", "template mark", "template create x", "template frob base", "template mark base --from x"):
        assert bot.handle(text, who("UADM")).status is Status.USAGE, text


def test_a_template_takes_no_snapshot_and_no_revert(bot: Bot) -> None:
    ok(bot, "template mark base")
    reply = bot.handle("snapshot base s1", who("UADM"))
    assert reply.status is Status.REFUSED and "a template's disks are never written" in reply.text()
    assert on_host(bot, "kvm01", lambda c: c.lookupByName("base").listAllSnapshots(0)) == []


def test_a_full_clone_of_a_linked_clone_says_it_is_flattened(bot: Bot) -> None:
    ok(bot, "template mark base")
    ok(bot, "clone base dev-l --linked")
    said = ok(bot, "clone dev-l dev-flat")
    assert "vda flattened from an overlay" in said
    assert xml_of(bot, "dev-flat").find("devices/disk/backingStore/source") is None


def test_h2_a_template_named_like_an_existing_vm_does_not_silently_replace_it_in_clone(bot: Bot) -> None:
    bot.handle("template create dev-box --from base", who("UADM"))  # NAME = an existing, unrelated VM
    out = bot.handle("clone dev-box dev-copy", who("UDEV"))  # the user names the VM dev-box
    cloned_the_template = out.status is Status.OK and "dev-box-v1" in out.text()
    assert not cloned_the_template, out.text()  # refused, ambiguous (candidates listed), or the VM: never the template


def test_clone_of_a_name_that_is_both_a_template_and_a_vm_is_refused_as_ambiguous(bot: Bot) -> None:
    ok(bot, "template create golden --from base")
    ok(bot, "clone base golden")  # a VM takes the template's name afterwards
    out = bot.handle("clone golden copy-a", who("UADM"))
    assert out.status is Status.REFUSED and "both template golden and the VM kvm01/golden" in out.text(), out.text()
    assert "golden-v1" in ok(bot, "clone golden copy-b --version 1")  # --version names the template
