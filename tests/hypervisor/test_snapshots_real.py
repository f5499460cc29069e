"""Snapshots on a real QEMU guest: data written after a snapshot is gone after revert, and a running
guest's snapshot keeps its memory (revert brings it back running)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import libvirt

from bot.reply import Reply, Status
from tests.hypervisor.conftest import Guest

PATTERN = "0xab"


def qemu_io(image: Path, command: str) -> subprocess.CompletedProcess[str]:
    """qemu-io as a check from outside (tests only); the guest is shut off so the image is not locked."""
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], capture_output=True, text=True)


def pattern_at_start(image: Path, byte: str) -> bool:
    done = qemu_io(image, f"read -P {byte} 0 64k")
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout + done.stderr


def test_revert_restores_the_disk_and_a_running_snapshot(
    ask: Callable[..., Reply], make_guest: Callable[..., Guest]
) -> None:
    guest = make_guest("acpi", "console=ttyS0 vmbot.ip=none")
    try:
        check_snapshots(ask, guest)
    finally:  # a guest with snapshot metadata cannot be undefined by the session's cleanup
        dom = guest.dom()
        if dom.isActive():
            dom.destroy()
        for snap in dom.listAllSnapshots(0):
            snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)


def check_snapshots(ask: Callable[..., Reply], guest: Guest) -> None:
    image = Path(os.environ.get("VMBOT_POOL_DIR", "/var/lib/vmbot/pool")) / guest.volume
    assert pattern_at_start(image, "0x00")

    taken = ask(f"snapshot {guest.target} clean --description 'empty disk'")
    assert taken.status is Status.OK and "disks (it was shut off)" in taken.headline, taken.text()
    assert qemu_io(image, f"write -P {PATTERN} 0 64k").returncode == 0  # a change after the snapshot
    assert pattern_at_start(image, PATTERN)
    reverted = ask(f"revert {guest.target} clean")
    assert reverted.status is Status.OK, reverted.text()
    assert pattern_at_start(image, "0x00") and not pattern_at_start(image, PATTERN)

    guest.ensure_running()
    said: list[str] = []
    live = ask(f"snapshot {guest.target} live", said.append)
    assert live.status is Status.OK and "disks and memory" in live.headline, live.text()
    assert any("pauses while its memory is saved" in line for line in said)
    guest.dom().destroy()
    back = ask(f"revert {guest.target} live")
    assert back.status is Status.OK and "is running" in back.headline, back.text()
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    listed = ask(f"snapshots {guest.target}").text()
    assert "clean" in listed and "empty disk" in listed and "live" in listed and "running" in listed
    guest.dom().destroy()
    assert ask(f"snapshot-delete {guest.target} clean").status is Status.OK
    assert [s.getName() for s in guest.dom().listAllSnapshots(0)] == ["live"]
