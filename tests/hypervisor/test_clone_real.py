"""Clones on a real QEMU guest: a full clone is a separate VM that boots; (templates) a linked clone's
disk is an overlay whose backing file is the template's disk, and it boots too."""

from __future__ import annotations

import json
import secrets
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import pytest

from bot.reply import Reply, Status
from bot.service import Bot
from tests.hypervisor.conftest import READY, Env, Guest, Libvirt, remove_guest


@pytest.fixture
def made(lv: Libvirt, hv: Env) -> Iterator[list[str]]:
    """Names of VMs the bot makes in a test; destroyed, undefined and their volumes deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            xml = lv.conn.lookupByName(name).XMLDesc(0)
        except Exception:
            continue
        files = [s.get("file", "") for s in ET.fromstring(xml).iterfind("devices/disk/source")]
        remove_guest(lv, name, "-", hv.pool)
        pool = lv.conn.storagePoolLookupByName(hv.pool)
        for vol in pool.listAllVolumes(0):
            if vol.path() in files:
                vol.delete(0)


def boots(ask: Callable[..., Reply], target: str) -> None:
    reply = ask(f"start {target} --console")
    assert reply.status is Status.OK, reply.text()
    assert READY in (reply.console or [""])[-1], (reply.console or [])[-5:]
    assert ask(f"destroy {target}").status is Status.OK


def test_a_full_clone_boots_and_leaves_the_source_as_it_was(
    ask: Callable[..., Reply], make_guest: Callable[..., Guest], lv: Libvirt, made: list[str]
) -> None:
    guest = make_guest("acpi", "console=ttyS0 vmbot.ip=none")
    before = guest.dom().XMLDesc(0)
    name = f"vmbot-t-clone-{secrets.token_hex(3)}"
    made.append(name)
    notes: list[str] = []
    reply = ask(f"clone {guest.target} {name}", notes.append)
    assert reply.status is Status.OK, reply.text()
    assert notes[0].startswith(f"copying disk 1 of 1 for {name}: vda")
    clone = lv.conn.lookupByName(name)
    root = ET.fromstring(clone.XMLDesc(0))
    path = root.find("devices/disk/source").get("file")  # type: ignore[union-attr]
    assert path.endswith(f"/{clone.UUIDString()}-vda.qcow2")
    assert guest.dom().XMLDesc(0) == before
    boots(ask, f"lab/{name}")


def backing_of(path: str) -> tuple[str, str]:
    """What qemu-img says the image's backing file and its format are (a check from outside, tests only)."""
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True,
                                     text=True, check=True).stdout)  # fmt: skip
    return info.get("backing-filename", ""), info.get("backing-filename-format", "")


def test_linked_clones_of_a_template_are_overlays_that_boot_and_a_batch_is_one_row_each(
    ask: Callable[..., Reply], make_guest: Callable[..., Guest], lv: Libvirt, hv_bot: Bot, made: list[str]
) -> None:
    template = make_guest("acpi", "console=ttyS0 vmbot.ip=none")
    base = lv.conn.storagePoolLookupByName(template_pool(lv, template)).storageVolLookupByName(template.volume).path()
    assert ask(f"template mark {template.target}").status is Status.OK
    refused = ask(f"start {template.target}")
    assert refused.status is Status.REFUSED and "a template never starts" in refused.text()
    tag = secrets.token_hex(3)
    names = [f"vmbot-t-linked-{tag}-{i}" for i in range(5)]
    made.extend(names)
    reply = ask(f"clone {template.target} {' '.join(names)} --linked")
    assert reply.status is Status.OK and reply.headline == "clone: 5 of 5 made", reply.text()
    for name in names:
        disk = ET.fromstring(lv.conn.lookupByName(name).XMLDesc(0)).find("devices/disk/source")
        assert backing_of(disk.get("file", "")) == (base, "qcow2")  # type: ignore[union-attr]
    where = "action = 'clone' and decision = 'allowed' and vm_name like ?"
    audit = list(hv_bot.audit.db["operations"].rows_where(where, [f"vmbot-t-linked-{tag}-%"], order_by="id"))
    assert [r["vm_name"] for r in audit] == names and {r["result"] for r in audit} == {"ok"}
    assert len({r["vm_uuid"] for r in audit}) == 5
    unmark = ask(f"template unmark {template.target}")
    assert unmark.status is Status.REFUSED and names[0] in unmark.text()
    boots(ask, f"lab/{names[0]}")
    assert backing_of(base) == ("", "")  # the template's own disk is still a plain image
    flat = f"vmbot-t-flat-{tag}"
    made.append(flat)
    copied = ask(f"clone lab/{names[1]} {flat}")  # a full clone of an overlay is standalone
    assert copied.status is Status.OK and "vda flattened from an overlay" in copied.text(), copied.text()
    disk = ET.fromstring(lv.conn.lookupByName(flat).XMLDesc(0)).find("devices/disk")
    assert disk is not None and disk.find("backingStore/source") is None
    assert backing_of(disk.find("source").get("file", "")) == ("", "")  # type: ignore[union-attr]


def template_pool(lv: Libvirt, guest: Guest) -> str:
    return ET.fromstring(guest.dom().XMLDesc(0)).find("devices/disk/source").get("pool", "")  # type: ignore[union-attr]
