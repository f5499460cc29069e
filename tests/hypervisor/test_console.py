"""start --console, screenshot and ip on a real QEMU guest, through the command layer."""

from __future__ import annotations

import re
from collections.abc import Callable

import libvirt

from bot.reply import Reply, Status
from tests.hypervisor.conftest import READY, Guest


def test_start_console_shows_the_boot_log_up_to_the_ready_line(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_off()
    notes: list[str] = []

    reply = ask(f"start {acpi_guest.target} --console", notes.append)

    assert reply.status is Status.OK, reply.text()
    assert re.search(r"started; ready after \d+\.\ds", reply.headline), reply.headline
    lines = reply.console or []
    assert any("Linux version" in line for line in lines[:5]), lines[:5]  # attached before the first byte
    assert READY in lines[-1], lines[-3:]  # and read up to the ready line, not beyond
    assert sum(READY in line for line in lines) == 1
    assert "Linux version" in acpi_guest.said()  # the serial log (tests' view) saw the same boot
    assert all("\x1b" not in line and "\r" not in line for line in lines)
    assert acpi_guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert notes == [f"{acpi_guest.name} started; reading its console"]
    assert READY in reply.text()  # the terminal shows the log too


def test_start_console_with_a_ready_line_that_never_comes(
    ask: Callable[..., Reply], hv_bot, noacpi_guest: Guest
) -> None:
    """The wait ends at the deadline: the VM is running and the user is told so, with what was read.

    8 s, not 2: under TCG on a loaded machine the kernel's first console line can take seconds."""
    noacpi_guest.ensure_off()
    old = hv_bot.life.console_ready, hv_bot.life.console_timeout
    hv_bot.life.console_ready, hv_bot.life.console_timeout = re.compile("NEVER-PRINTED"), 8.0
    try:
        reply = ask(f"start {noacpi_guest.target} --console")
    finally:
        hv_bot.life.console_ready, hv_bot.life.console_timeout = old
    assert reply.status is Status.OK
    assert "no ready line within 8s (the VM is running)" in reply.headline
    assert reply.console, "the lines read so far are shown"
    assert noacpi_guest.dom().isActive()


def test_screenshot_is_a_png_attachment(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()

    reply = ask(f"screenshot {acpi_guest.target}")

    assert reply.status is Status.OK, reply.text()
    shot = reply.attachment
    assert shot is not None
    assert shot.mimetype == "image/png"
    assert shot.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(shot.content) > 1000
    assert re.fullmatch(rf"screenshot-lab-{acpi_guest.name}-\d{{8}}-\d{{6}}\.png", shot.filename)


def test_screenshot_of_a_shut_off_vm_is_refused(ask: Callable[..., Reply], make_guest: Callable[..., Guest]) -> None:
    off = make_guest("acpi")
    reply = ask(f"screenshot {off.target}")
    assert reply.status is Status.REFUSED
    assert reply.headline == f"{off.name} is shut off; screenshot applies to a running VM"
    assert reply.attachment is None


def test_ip_shows_the_dhcp_lease(ask: Callable[..., Reply], acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    said = acpi_guest.said()
    addr = re.findall(r"VMBOT-GUEST-READY variant=acpi ip=(192\.168\.123\.\d+)/24", said)
    assert addr, said[-300:]

    reply = ask(f"ip {acpi_guest.target}")

    assert reply.status is Status.OK, reply.text()
    assert reply.headline == f"{acpi_guest.name} on lab: addresses"
    assert any(re.search(rf"ipv4 {re.escape(addr[-1])}/24$", line) for line in reply.lines), reply.lines
