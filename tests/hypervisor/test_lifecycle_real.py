"""Every state change on a real QEMU guest, through the command layer, checked against libvirt and virsh."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import datetime

import libvirt

from bot.reply import Reply, Status
from bot.service import Bot
from bot.times import clock
from tests.hypervisor.conftest import Guest, virsh, wait_for

SINCE = r" since \d\d:\d\d:\d\d UTC$"


def test_suspend_and_resume(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()

    assert ask(f"suspend {acpi_guest.target}").headline == f"lab/{acpi_guest.name}: paused"
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_PAUSED
    assert re.search(r": paused \(user\)" + SINCE, ask(f"state {acpi_guest.target}").headline)

    assert ask(f"resume {acpi_guest.target}").headline == f"lab/{acpi_guest.name}: resumed"
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert re.search(r": running \(unpaused\)" + SINCE, ask(f"state {acpi_guest.target}").headline)


def test_a_change_made_with_virsh_is_noticed_with_its_time(
    ask: Callable[..., Reply], hv_bot: Bot, acpi_guest: Guest
) -> None:
    acpi_guest.ensure_running()
    ask(f"state {acpi_guest.target}")  # the bot is connected to the host, so it hears its events
    before = time.time()

    virsh("suspend", acpi_guest.name)
    try:
        ref = hv_bot.fleet.resolve([acpi_guest.target]).refs[0]
        wait_for(lambda: (c := hv_bot.events.last(ref)) and c.state and c.state.name == "paused", 10, "the event")
        reply = ask(f"state {acpi_guest.target}")
    finally:
        virsh("resume", acpi_guest.name)

    assert re.search(r": paused \(user\)" + SINCE, reply.headline), reply.headline
    suspended = next(r for r in hv_bot.events.history(ref) if r["event"] == "suspended")
    assert (suspended["state"], suspended["reason"], suspended["source"]) == ("paused", "user", "event")
    at = datetime.fromisoformat(suspended["at"])
    assert before - 1 <= at.timestamp() <= time.time()
    assert reply.headline.endswith(f" since {clock(at)}")  # the time the change happened, recorded in the db


def test_managedsave_then_start_restores_the_guest(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    boots = acpi_guest.ready_count()

    saved = ask(f"managedsave {acpi_guest.target}")
    assert saved.status is Status.OK, saved.text()
    assert acpi_guest.dom().state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED]
    assert acpi_guest.dom().hasManagedSaveImage(0)
    assert re.search(r": shut off \(saved\)" + SINCE, ask(f"state {acpi_guest.target}").headline)

    started = ask(f"start {acpi_guest.target}")
    assert started.headline == f"lab/{acpi_guest.name}: started from its managed-save image"
    assert acpi_guest.dom().state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]
    assert not acpi_guest.dom().hasManagedSaveImage(0)
    assert ask(f"state {acpi_guest.target}").headline.startswith(f"{acpi_guest.name} on lab: running (restored)")
    assert acpi_guest.ready_count() == boots  # restored, not booted again


def test_reboot_boots_the_guest_again(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    boots = acpi_guest.ready_count()

    reply = ask(f"reboot {acpi_guest.target}")

    assert reply.headline == f"lab/{acpi_guest.name}: reboot requested", reply.text()
    acpi_guest.wait_ready(boots + 1)  # the guest powered off on ACPI and QEMU started it again
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_RUNNING


def test_reset_restarts_the_guest_at_once(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    boots = acpi_guest.ready_count()
    pid = acpi_guest.qemu_pid()

    reply = ask(f"reset {acpi_guest.target}")

    assert reply.headline == f"lab/{acpi_guest.name}: reset", reply.text()
    acpi_guest.wait_ready(boots + 1)
    assert acpi_guest.qemu_pid() == pid  # same QEMU: a reset, not a restart


def test_autostart_is_what_virsh_dominfo_shows(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    def dominfo_autostart() -> str:
        return re.search(r"^Autostart:\s+(\S+)", virsh("dominfo", acpi_guest.name), re.M).group(1)  # type: ignore[union-attr]

    assert dominfo_autostart() == "disable"
    assert ask(f"autostart {acpi_guest.target}").headline == f"lab/{acpi_guest.name}: autostart enabled"
    assert dominfo_autostart() == "enable"
    assert acpi_guest.name in ask("list --autostart").text()
    assert ask(f"autostart {acpi_guest.target} --disable").headline.endswith("autostart disabled")
    assert dominfo_autostart() == "disable"


def test_graceful_shutdown_reports_its_duration_on_the_event(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    notes: list[tuple[float, str]] = []
    started = time.monotonic()

    reply = ask(f"shutdown {acpi_guest.target} --timeout 30", lambda m: notes.append((time.monotonic(), m)))

    took = time.monotonic() - started
    assert reply.status is Status.OK, reply.text()
    m = re.fullmatch(rf"lab/{acpi_guest.name}: shut off after (\d+\.\d)s", reply.headline)
    assert m, reply.headline
    assert 0.1 < float(m.group(1)) < 10
    assert acpi_guest.dom().state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    assert notes[0][1].startswith(f"asked {acpi_guest.name} to power off")
    assert notes[-1][1] == f"{acpi_guest.name} shut off after {m.group(1)}s"
    assert took - (notes[-1][0] - started) < 1.0  # the progress note came when it stopped, not at the end
    assert re.search(r": shut off \(shutdown\)" + SINCE, ask(f"state {acpi_guest.target}").headline)


def test_destroy_powers_off_at_once(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    reply = ask(f"destroy {acpi_guest.target}")
    assert reply.headline == f"lab/{acpi_guest.name}: destroyed (powered off at once)", reply.text()
    assert acpi_guest.dom().state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    assert "shut off (destroyed)" in ask(f"state {acpi_guest.target}").headline


def test_a_killed_qemu_shows_as_crashed_and_is_flagged_in_list(
    ask: Callable[..., Reply], hv_bot: Bot, acpi_guest: Guest
) -> None:
    acpi_guest.ensure_running()
    ask(f"state {acpi_guest.target}")
    mark = len(hv_bot.events.history(hv_bot.fleet.resolve([acpi_guest.target]).refs[0], 1000))

    os.kill(acpi_guest.qemu_pid(), 9)
    wait_for(lambda: not acpi_guest.dom().isActive(), 15, "libvirt to see QEMU gone")

    state = ask(f"state {acpi_guest.target}")
    assert re.search(r": shut off \(crashed\)" + SINCE, state.headline), state.headline
    listing = ask("list --all").text()
    assert re.search(rf"⚫ {acpi_guest.name}\s+shut off \(crashed\)", listing), listing
    assert acpi_guest.name in ask("list --state crashed").text()
    rows = hv_bot.events.history(hv_bot.fleet.resolve([acpi_guest.target]).refs[0], 1000)
    new = [(r["event"], r["state"], r["source"]) for r in rows[: len(rows) - mark]]
    assert ("stopped", "shut off", "event") in new, new  # recorded from the event, with its time


def test_shutdown_right_after_a_reboot_presses_again_until_the_guest_hears_it(
    ask: Callable[..., Reply], acpi_guest: Guest
) -> None:
    """Defect 12: right after libvirt's reboot the first ACPI press is lost; a later press works."""
    acpi_guest.ensure_running()
    boots = acpi_guest.said().count("Linux version")
    virsh("reboot", acpi_guest.name)
    wait_for(lambda: acpi_guest.said().count("Linux version") > boots, 60, "the guest to boot again")
    notes: list[str] = []  # the kernel is booting and acpid not up yet: a press now is not heard

    reply = ask(f"shutdown {acpi_guest.target} --timeout 40", notes.append)

    assert reply.status is Status.OK, reply.text()
    assert (
        notes[0]
        == f"asked {acpi_guest.name} to power off; waiting up to 40s, pressing the power button again every 10s"
    )
    assert acpi_guest.dom().state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
