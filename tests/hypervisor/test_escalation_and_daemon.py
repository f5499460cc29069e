"""A guest that ignores ACPI, and libvirtd restarted under a running bot."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from bot.config import load
from bot.reply import Reply, Status
from bot.service import Bot
from bot.store.audit import Actor
from handlers.cli import make_policy
from tests.hypervisor.conftest import HOST, Env, Guest, restart_libvirtd, virsh, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_shutdown_timeout_on_a_guest_that_ignores_acpi(ask: Callable[..., Reply], noacpi_guest: Guest) -> None:
    noacpi_guest.ensure_running()
    notes: list[str] = []
    started = time.monotonic()

    reply = ask(f"shutdown {noacpi_guest.target} --timeout 5", notes.append)

    took = time.monotonic() - started
    assert reply.status is Status.REFUSED, reply.text()
    assert reply.headline == (
        f"lab/{noacpi_guest.name}: {noacpi_guest.name} is still running after 5s: the guest did not power off. "
        f"Nothing was forced; `destroy lab/{noacpi_guest.name}` would power it off"
    )
    assert 5 <= took < 9
    assert noacpi_guest.dom().state()[0] == libvirt.VIR_DOMAIN_RUNNING  # left running
    assert notes[0] == f"asked {noacpi_guest.name} to power off; waiting up to 5s"  # shorter than one press interval
    assert not any("shut off after" in n for n in notes)

    destroyed = ask(f"destroy {noacpi_guest.target}")  # the escalation the reply offered
    assert destroyed.status is Status.OK, destroyed.text()
    assert not noacpi_guest.dom().isActive()


def test_libvirtd_restarted_under_a_running_bot(
    ask: Callable[..., Reply], hv_bot: Bot, hv: Env, acpi_guest: Guest
) -> None:
    acpi_guest.ensure_running()
    assert ask(f"state {acpi_guest.target}").status is Status.OK  # the bot holds an open connection
    opened = hv_bot.pool.host(HOST).opened

    restart_libvirtd(hv.uri)

    reply = ask(f"state {acpi_guest.target}")  # the very next command
    assert reply.status is Status.OK, reply.text()
    assert re.match(rf"{acpi_guest.name} on lab: running \(", reply.headline), reply.headline
    assert hv_bot.pool.host(HOST).opened == opened + 1  # it reconnected, once
    assert ask(f"suspend {acpi_guest.target}").status is Status.OK  # and changes work on the new connection
    assert ask(f"resume {acpi_guest.target}").status is Status.OK
    assert hv_bot.pool.status(HOST) is None

    ref = hv_bot.fleet.resolve([acpi_guest.target]).refs[0]
    virsh("suspend", acpi_guest.name)  # events flow again on the new connection: outside changes are heard
    try:
        wait_for(lambda: (c := hv_bot.events.last(ref)) and c.state and c.state.name == "paused", 10, "the event")
    finally:
        virsh("resume", acpi_guest.name)


def test_example_config_runs_here_and_destroy_after_a_timeout_needs_approval(
    noacpi_guest: Guest, tmp_path: Path
) -> None:
    """examples/local-qemu.toml with its policy: the offered escalation waits for a second admin."""
    config = load(EXAMPLES / "local-qemu.toml")
    config.store_path = str(tmp_path / "vmbot.db")  # not the example's var/ store
    bot = Bot(config, make_policy(config))
    root, peer = Actor("U0LABROOT", "C0LAB", "root"), Actor("U0LABPEER", "C0LAB", "peer")
    try:
        noacpi_guest.ensure_running()
        timed_out = bot.handle(f"shutdown {noacpi_guest.target} --timeout 5", root)
        assert timed_out.status is Status.REFUSED and "did not power off" in timed_out.headline

        pending = bot.handle(f"destroy {noacpi_guest.target} --reason 'ignores ACPI'", root)
        assert pending.status is Status.PENDING, pending.text()
        assert pending.request_id
        assert noacpi_guest.dom().isActive()  # nothing ran yet
        assert bot.handle(f"approve {pending.request_id}", root).status is not Status.OK  # never one's own

        approved = bot.handle(f"approve {pending.request_id}", peer)
        assert approved.status is Status.OK, approved.text()
        assert not noacpi_guest.dom().isActive()
        assert "shut off (destroyed)" in bot.handle(f"state {noacpi_guest.target}", root).headline
    finally:
        bot.close()
