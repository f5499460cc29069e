"""Fleet addressing: name, host/name, quoting, odd names, globs, suggestions, ambiguity, UUID identity."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import libvirt
import pytest

from bot.commands import parse
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, audit_rows


def state_name(bot: Bot, pattern: str) -> str:
    sel = bot.fleet.resolve([pattern])
    assert not sel.problems, sel.problems
    (ref,) = sel.refs
    return bot.life.state(ref).name


def test_inventory_lists_every_vm_with_host_uuid_and_state(demo_bot: Bot) -> None:
    inv = demo_bot.fleet.inventory()
    assert inv.down == {}
    names = sorted(str(r.ref) for r in inv.rows)
    assert names == [
        "kvm01/centos7",
        "kvm01/db-server",
        "kvm01/ubuntu20",
        "kvm01/web-server",
        "kvm02/app-server",
        "kvm02/centos7-template",
        "kvm02/db-server",
    ]
    by_name = {str(r.ref): r for r in inv.rows}
    assert by_name["kvm01/centos7"].state.name == "shut off"
    assert by_name["kvm01/web-server"].state.name == "paused"
    assert by_name["kvm01/ubuntu20"].state.name == "running"
    assert by_name["kvm01/centos7"].ref.uuid == "249d5dd9-c072-50c2-91bd-f51da178d55b"
    # the test driver reports only state stats, so vcpus/memory are read per VM (info) instead
    assert demo_bot.fleet.row(by_name["kvm01/ubuntu20"].ref).vcpus == 4


@pytest.mark.parametrize("name", ["a b", "<!channel>", "web;rm", "*", ".."])
def test_odd_names_are_addressed_exactly(odd_bot: Bot, actor: Actor, name: str) -> None:
    sel = odd_bot.fleet.resolve([name])
    assert not sel.problems and not sel.globbed
    assert [r.name for r in sel.refs] == [name]
    reply = odd_bot.handle(f"state '{name}'", actor)
    assert reply.status is Status.OK
    assert reply.headline.startswith(f"{name} on h")


def test_quoted_name_with_space_through_a_state_change(odd_bot: Bot, actor: Actor) -> None:
    reply = odd_bot.handle('resume "a b"', actor)
    assert (reply.status, reply.headline) == (Status.OK, "h1/a b: resumed")
    assert state_name(odd_bot, "a b") == "running"
    unquoted = odd_bot.handle("resume a b", actor)
    assert unquoted.status is Status.REFUSED
    assert "no VM named 'a'" in unquoted.headline and "no VM named 'b'" in unquoted.headline


def test_literal_star_vm_is_not_a_glob_but_other_globs_are(odd_bot: Bot) -> None:
    star = odd_bot.fleet.resolve(["*"])
    assert [str(r) for r in star.refs] == ["h2/*"]
    glob = odd_bot.fleet.resolve(["web-0?"])
    assert glob.globbed and sorted(str(r) for r in glob.refs) == ["h1/web-01", "h1/web-02", "h1/web-03"]
    scoped = odd_bot.fleet.resolve(["h2/w*"])
    assert [str(r) for r in scoped.refs] == ["h2/web;rm"]


def test_ambiguous_name_lists_both_hosts(odd_bot: Bot, actor: Actor) -> None:
    reply = odd_bot.handle("destroy shared", actor)
    assert reply.status is Status.REFUSED
    assert reply.headline == "'shared' is on 2 hosts: h1/shared, h2/shared; name one as host/name"
    assert state_name(odd_bot, "h1/shared") == "running"


def test_host_slash_name_picks_one(odd_bot: Bot, actor: Actor) -> None:
    reply = odd_bot.handle("state h2/shared", actor)
    assert reply.headline == "shared on h2: shut off (unknown)"
    done = odd_bot.handle("destroy h1/shared", actor)
    assert done.headline == "h1/shared: destroyed (powered off at once)"
    assert state_name(odd_bot, "h1/shared") == "shut off"


def test_unknown_host(odd_bot: Bot, actor: Actor) -> None:
    reply = odd_bot.handle("start h9/web-01", actor)
    assert reply.status is Status.REFUSED
    assert reply.headline == "no host named 'h9'; hosts: h1, h2"


def test_unknown_vm_suggests_close_matches(odd_bot: Bot, actor: Actor) -> None:
    reply = odd_bot.handle("start web-1", actor)
    assert reply.status is Status.REFUSED
    assert reply.headline.startswith("no VM named 'web-1'; did you mean web-01")
    on_host = odd_bot.handle("state h2/web-01", actor)
    assert on_host.headline == "no VM named 'web-01' on h2; did you mean db-01?"
    nothing = odd_bot.handle("start zz-*", actor)
    assert nothing.headline == "no VM matches 'zz-*'"


def test_one_unknown_target_refuses_the_whole_batch(odd_bot: Bot, actor: Actor) -> None:
    reply = odd_bot.handle("destroy web-01 web-99", actor)
    assert reply.status is Status.REFUSED
    assert "no VM named 'web-99'" in reply.headline
    assert state_name(odd_bot, "web-01") == "running"


def test_same_vm_named_twice_acts_once(odd_bot: Bot, actor: Actor) -> None:
    sel = odd_bot.fleet.resolve(["web-01", "h1/web-01", "web-0[1]"])
    assert [str(r) for r in sel.refs] == ["h1/web-01"]


def test_glob_says_how_many_and_which_and_asks_for_yes_above_the_limit(
    make_bot: Callable[..., Bot], actor: Actor
) -> None:
    bot = make_bot(fleet={"h1": [Vm(f"web-{i}") for i in range(1, 5)] + [Vm("db")]}, confirm_above=3)
    reply = bot.handle("suspend web-*", actor)
    assert reply.status is Status.REFUSED
    assert reply.headline == ("web-* selects 4 VMs: h1/web-1, h1/web-2, h1/web-3, h1/web-4; add --yes to suspend all 4")
    assert all(r.state.name == "running" for r in bot.fleet.inventory().rows)
    assert [r["decision"] for r in audit_rows(bot)] == ["refused"] * 4
    yes = bot.handle("suspend web-* --yes", actor)
    assert yes.status is Status.OK and yes.headline == "suspend: 4 of 4 done"
    assert yes.lines == [f"h1/web-{i}: paused" for i in range(1, 5)]
    under = bot.handle("resume web-[123]", actor)
    assert under.status is Status.OK and len(under.lines) == 3


def test_names_typed_in_full_never_need_yes(make_bot: Callable[..., Bot], actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm(f"v{i}") for i in range(4)]}, confirm_above=2)
    assert bot.handle("suspend v0 v1 v2 v3", actor).status is Status.OK


def redefine(conn: libvirt.virConnect, uuid: str) -> None:
    """Undefine a VM and define it again from its XML minus the UUID, as an operator might."""
    dom = conn.lookupByUUIDString(uuid)
    root = ET.fromstring(dom.XMLDesc(0))
    if dom.isActive():
        dom.destroy()
    dom.undefine()
    root.remove(root.find("uuid"))  # type: ignore[arg-type]
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def test_redefined_vm_is_a_different_vm(odd_bot: Bot) -> None:
    (old,) = odd_bot.fleet.resolve(["web-02"]).refs
    odd_bot.pool.call("h1", lambda c: redefine(c, old.uuid))
    (new,) = odd_bot.fleet.resolve(["web-02"]).refs
    assert new.name == old.name and new.host == old.host and new.uuid != old.uuid
    with pytest.raises(libvirt.libvirtError):
        odd_bot.life.run(old, parse("start web-02"))
    with pytest.raises(libvirt.libvirtError):
        odd_bot.fleet.row(old)
    assert odd_bot.life.state(new).name == "shut off"  # the old ref did not start the new VM


def test_row_reads_the_vm_by_uuid(odd_bot: Bot) -> None:
    (ref,) = odd_bot.fleet.resolve(["h2/db-01"]).refs
    row = odd_bot.fleet.row(ref)
    assert row.ref == ref and row.state.name == "running" and row.autostart is False


def test_chat_names_hosts_never_uris(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("start test:///default/test", actor)
    assert reply.status is Status.REFUSED and reply.headline.startswith("no host named 'test:'; hosts: kvm01, kvm02")
    listing = demo_bot.handle("list --host qemu:///system", actor)
    assert listing.status is Status.USAGE and listing.headline.startswith("no host named 'qemu:///system'")
