"""Every everyday action, every refused transition, batches, dry runs, managed save, undefine, autostart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.hypervisor.states import State
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, Volume, audit_rows

STATES = {"r": "running", "p": "paused", "o": "shut off"}


@pytest.fixture
def bot(make_bot: Callable[..., Bot]) -> Bot:
    """One VM per state (r running, p paused, o shut off), plus spares for batches."""
    vms = [Vm(n, s) for n, s in STATES.items()] + [Vm("r2"), Vm("r3"), Vm("o2", "shut off")]
    return make_bot(fleet={"h1": vms})


def state_of(bot: Bot, name: str) -> State:
    (ref,) = bot.fleet.resolve([name]).refs
    return bot.life.state(ref)


# action, VM, reply, state after
DONE = [
    ("start", "o", "h1/o: started", "running"),
    ("suspend", "r", "h1/r: paused", "paused"),
    ("resume", "p", "h1/p: resumed", "running"),
    ("managedsave", "r", "h1/r: saved to disk and stopped (start restores it)", "shut off"),
    ("managedsave", "p", "h1/p: saved to disk and stopped (start restores it)", "shut off"),
    ("reboot", "r", "h1/r: reboot requested", "running"),
    ("reset", "r", "h1/r: reset", "running"),
    ("reset", "p", "h1/p: reset", "paused"),
    ("shutdown", "r", "h1/r: shut off", "shut off"),
    ("destroy", "r", "h1/r: destroyed (powered off at once)", "shut off"),
    ("destroy", "p", "h1/p: destroyed (powered off at once)", "shut off"),
    ("autostart", "o", "h1/o: autostart enabled", "shut off"),
    ("autostart", "r", "h1/r: autostart enabled", "running"),
]


@pytest.mark.parametrize(("action", "vm", "said", "after"), DONE)
def test_action_in_a_state_it_applies_to(bot: Bot, actor: Actor, action: str, vm: str, said: str, after: str) -> None:
    reply = bot.handle(f"{action} {vm}", actor)
    assert (reply.status, reply.headline) == (Status.OK, said)
    assert reply.changed
    assert state_of(bot, vm).name == after
    (row,) = audit_rows(bot)
    assert (row["action"], row["vm_name"], row["decision"], row["result"]) == (action, vm, "allowed", "ok")


WANTS = {
    "start": "a shut-off VM",
    "suspend": "a running VM",
    "resume": "a paused VM",
    "managedsave": "a running or paused VM",
    "reboot": "a running VM",
    "reset": "a running or paused VM",
    "shutdown": "a running VM",
    "destroy": "a running or paused VM",
    "undefine": "a shut-off VM (destroy or shut it down first)",
}
REFUSED = [
    ("start", "r"),
    ("start", "p"),
    ("suspend", "p"),
    ("suspend", "o"),
    ("resume", "r"),
    ("resume", "o"),
    ("managedsave", "o"),
    ("reboot", "p"),
    ("reboot", "o"),
    ("reset", "o"),
    ("shutdown", "p"),
    ("shutdown", "o"),
    ("destroy", "o"),
    ("undefine", "r"),
    ("undefine", "p"),
]


@pytest.mark.parametrize(("action", "vm"), REFUSED)
def test_every_refused_transition_names_the_state_and_what_applies(
    bot: Bot, actor: Actor, action: str, vm: str
) -> None:
    before = state_of(bot, vm)
    reply = bot.handle(f"{action} {vm}", actor)
    assert reply.status is Status.REFUSED and not reply.changed
    assert reply.headline == f"h1/{vm}: {vm} is {STATES[vm]}; {action} applies to {WANTS[action]}"
    assert state_of(bot, vm) == before
    (row,) = audit_rows(bot)
    assert (row["action"], row["vm_name"], row["result"]) == (action, vm, "refused")
    assert row["detail"] == f"{vm} is {STATES[vm]}; {action} applies to {WANTS[action]}"


def test_the_issue_example_wording(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("resume ubuntu20", actor)
    assert reply.headline == "kvm01/ubuntu20: ubuntu20 is running; resume applies to a paused VM"


def test_state_shows_the_reason_like_virsh(bot: Bot, actor: Actor) -> None:
    bot.handle("suspend r", actor)
    assert bot.handle("state r", actor).headline.startswith("r on h1: paused (user)")
    bot.handle("destroy r", actor)
    assert bot.handle("state r", actor).headline.startswith("r on h1: shut off (destroyed)")


def test_batch_with_partial_failure_gives_one_line_each(bot: Bot, actor: Actor) -> None:
    reply = bot.handle("suspend r r2 o p", actor)
    assert reply.status is Status.FAILED and reply.status.exit_code == 1
    assert reply.headline == "suspend: 2 of 4 done, 2 not"
    assert reply.lines == [
        "h1/r: paused",
        "h1/r2: paused",
        "h1/o: o is shut off; suspend applies to a running VM",
        "h1/p: p is paused; suspend applies to a running VM",
    ]
    assert [state_of(bot, n).name for n in ("r", "r2", "o", "p")] == ["paused", "paused", "shut off", "paused"]
    assert [(r["vm_name"], r["result"]) for r in audit_rows(bot)] == [
        ("r", "ok"),
        ("r2", "ok"),
        ("o", "refused"),
        ("p", "refused"),
    ]


def test_batch_where_nothing_applies_is_refused(bot: Bot, actor: Actor) -> None:
    reply = bot.handle("start r r2", actor)
    assert reply.status is Status.REFUSED and reply.headline == "start: 0 of 2 done, 2 not"
    assert len(reply.lines) == 2 and not reply.changed


def test_dry_run_changes_nothing(bot: Bot, actor: Actor) -> None:
    reply = bot.handle("destroy r p o --dry-run", actor)
    assert reply.status is Status.OK
    assert reply.headline == "dry run: nothing was changed (demo fleet: everyone may do everything)"
    assert len(reply.lines) == 3  # one preview line per VM (bot/approval/preview.py words them)
    assert "r on h1, running" in reply.lines[0] and "p on h1, paused" in reply.lines[1]
    assert reply.lines[2].endswith("o is shut off; destroy applies to a running or paused VM")
    assert [state_of(bot, n).name for n in ("r", "p", "o")] == ["running", "paused", "shut off"]
    assert {r["decision"] for r in audit_rows(bot)} == {"dry-run"}
    undefine = bot.handle("undefine o --dry-run --remove-storage", actor)
    assert len(undefine.lines) == 1 and "o on h1, shut off" in undefine.lines[0]
    assert state_of(bot, "o").name == "shut off"


def test_managedsave_then_start_restores_and_force_boot_discards(bot: Bot, actor: Actor) -> None:
    bot.handle("managedsave r r2", actor)
    assert str(state_of(bot, "r")) == "shut off (saved)"
    info = bot.handle("info r", actor)
    assert ("Managed save", "yes") in info.card.fields  # type: ignore[union-attr]
    assert bot.handle("start r", actor).headline == "h1/r: started from its managed-save image"
    assert state_of(bot, "r").name == "running"
    forced = bot.handle("start r2 --force-boot", actor)
    assert forced.headline == "h1/r2: started (managed-save image discarded)"
    assert bot.handle("info r2", actor).card.fields[-1] == ("Managed save", "no")  # type: ignore[union-attr]


def test_shutdown_with_timeout_waits_until_off(bot: Bot, actor: Actor) -> None:
    notes: list[str] = []
    reply = bot.handle("shutdown r --timeout 30", actor, progress=notes.append)
    assert reply.status is Status.OK
    assert reply.headline.startswith("h1/r: shut off after ")
    assert notes[0] == "asked r to power off; waiting up to 30s, pressing the power button again every 10s"
    assert state_of(bot, "r").name == "shut off"


@pytest.mark.parametrize(
    ("flag", "says"),
    [("abc", "--timeout wants whole seconds in digits, like --timeout 30 (got 'abc')"), ("0", "between 1 and 3600")],
)
def test_shutdown_with_a_bad_timeout_changes_nothing(bot: Bot, actor: Actor, flag: str, says: str) -> None:
    reply = bot.handle(f"shutdown r --timeout {flag}", actor)
    assert reply.status is Status.USAGE and says in reply.headline  # refused while parsing
    assert state_of(bot, "r").name == "running"


def test_autostart_and_list_autostart(bot: Bot, actor: Actor) -> None:
    assert bot.handle("autostart o r", actor).lines == ["h1/o: autostart enabled", "h1/r: autostart enabled"]
    assert bot.handle("autostart o", actor).headline == "h1/o: autostart was already enabled"
    listing = bot.handle("list --autostart", actor)
    assert listing.headline == "2 VMs on 1 host(s)"
    assert [r.ref.name for r in listing.listing.hosts["h1"]] == ["o", "r"]  # type: ignore[union-attr]
    assert "o                        shut off  autostart" in listing.text()
    assert bot.handle("autostart o --disable", actor).headline == "h1/o: autostart disabled"
    after = bot.handle("list --autostart", actor)
    assert [r.ref.name for r in after.listing.hosts["h1"]] == ["r"]  # type: ignore[union-attr]


def test_list_filters(bot: Bot, actor: Actor) -> None:
    active = bot.handle("list", actor)  # like virsh list: running and paused, not shut off
    assert active.headline == "4 running VMs on 1 host(s)"
    assert [r.ref.name for r in active.listing.hosts["h1"]] == ["p", "r", "r2", "r3"]  # type: ignore[union-attr]
    assert bot.handle("list --all", actor).headline == "6 VMs on 1 host(s)"
    paused = bot.handle("list --state paused", actor)
    assert [r.ref.name for r in paused.listing.hosts["h1"]] == ["p"]  # type: ignore[union-attr]
    off = bot.handle("list --state shutoff --host h1", actor)
    assert [r.ref.name for r in off.listing.hosts["h1"]] == ["o", "o2"]  # type: ignore[union-attr]
    assert bot.handle("list --host h9", actor).status is Status.USAGE
    assert bot.handle("list --state sleepy", actor).headline.startswith("unknown state 'sleepy'")


def test_reads_state_info_ip_dumpxml(bot: Bot, actor: Actor) -> None:
    info = bot.handle("info o", actor)
    fields = dict(info.card.fields)  # type: ignore[union-attr]
    assert fields["Name"] == "o" and fields["State"] == "shut off (unknown)" and fields["Id"] == "-"
    assert info.card.actions == ["start"]  # type: ignore[union-attr]
    assert bot.handle("info p", actor).card.actions == ["resume", "reset", "destroy"]  # type: ignore[union-attr]
    dump = bot.handle("dumpxml r", actor)
    assert "<name>r</name>" in (dump.code or "")
    assert bot.handle("ip r", actor).headline.startswith("r on h1: ")
    refused = bot.handle("ip o", actor)
    assert refused.status is Status.REFUSED and refused.headline == "o is shut off; ip applies to a running VM"


def test_undefine_keeps_disks_unless_asked(make_bot: Callable[..., Bot], actor: Actor) -> None:
    vms = [Vm("old", "shut off", disks=["/fleet-pool/old.img", "/srv/elsewhere/old-data.img"]), Vm("keep", "shut off")]
    bot = make_bot(fleet={"h1": vms}, volumes={"h1": [Volume("old.img"), Volume("keep.img")]})

    def volumes() -> list[str]:
        return sorted(bot.pool.call("h1", lambda c: c.storagePoolLookupByName("default").listVolumes()))

    reply = bot.handle("undefine old --remove-storage", actor)
    assert reply.status is Status.OK
    assert (
        reply.headline == "h1/old: undefined; removed 1 volume(s); kept /srv/elsewhere/old-data.img (not a pool volume)"
    )
    assert volumes() == ["keep.img"]
    assert bot.handle("state old", actor).headline == "no VM named 'old'"
    kept = bot.handle("undefine keep", actor)
    assert kept.headline == "h1/keep: undefined"
    assert volumes() == ["keep.img"]


def test_undefine_without_remove_storage_keeps_the_volume(make_bot: Callable[..., Bot], actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm("v", "shut off", disks=["/fleet-pool/v.img"])]}, volumes={"h1": [Volume("v.img")]})
    assert bot.handle("undefine v", actor).headline == "h1/v: undefined (its disks were kept)"
    assert bot.pool.call("h1", lambda c: c.storageVolLookupByPath("/fleet-pool/v.img").name()) == "v.img"


def test_undefine_a_managed_saved_vm(bot: Bot, actor: Actor) -> None:
    bot.handle("managedsave r", actor)
    assert bot.handle("undefine r", actor).headline == "h1/r: undefined"
    assert [r.ref.name for r in bot.fleet.inventory().rows if r.ref.name == "r"] == []
