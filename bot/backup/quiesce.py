"""Freeze and thaw a guest's filesystems through its QEMU agent, never waiting on the agent for ever.

libvirt waits for a guest agent without a deadline by default, and a hung or
stopped agent would hold a backup (and its VM lock) with it. So each call runs
in a daemon thread and the caller waits at most ``WAIT`` seconds: past that
the backup goes on without a freeze (crash-consistent). The call itself stays
in flight (libvirt has already sent it); if a freeze lands late, when the
agent wakes up, that thread thaws the guest at once, so a late freeze never
leaves the guest frozen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import libvirt

WAIT = 15.0  # seconds an agent gets to freeze or thaw; a healthy one needs well under one


def freeze(dom: libvirt.virDomain) -> int | None:
    """Quiesce the guest's filesystems: how many the agent froze; None with no agent, or none in time.

    Why a count: an agent that answers but has nothing mounted it can freeze (a
    raw data device, an initramfs) quiesced nothing, so that backup is only
    crash-consistent; the agent still gets its thaw."""
    return _bounded(dom, lambda d: d.fsFreeze(), late=_thaw_now)


def thaw(dom: libvirt.virDomain) -> bool:
    """Thaw the guest's filesystems (no agent, or nothing frozen: nothing happens); bounded like freeze.

    False when it was not confirmed: the agent did not answer in time, or libvirt refused the call (the VM
    paused, the agent gone). The guest may still be frozen (its writes wait), and whoever asked for the
    backup must be told."""
    return _bounded(dom, lambda d: d.fsThaw()) is not None


def _thaw_now(dom: libvirt.virDomain) -> int:
    try:
        return dom.fsThaw()
    except libvirt.libvirtError:
        return 0


def _bounded(
    dom: libvirt.virDomain,
    call: Callable[[libvirt.virDomain], int],
    late: Callable[[libvirt.virDomain], object] | None = None,
) -> int | None:
    """``call(dom)`` for at most WAIT seconds: its result, or None on a libvirt error or when time ran out.

    A call that returns after the caller gave up and succeeded gets ``late(dom)`` in its own thread. The
    thread holds ``dom``, which keeps its connection open even after the backup closes its own reference."""
    box: dict[str, int | bool | None] = {}
    lock, done = threading.Lock(), threading.Event()

    def run() -> None:
        try:
            result: int | None = call(dom)
        except libvirt.libvirtError:
            result = None
        with lock:
            box["result"], gave_up = result, bool(box.get("gave_up"))
        done.set()
        if gave_up and result is not None and late is not None:
            late(dom)

    threading.Thread(target=run, name="vmbot-guest-agent", daemon=True).start()
    done.wait(WAIT)
    with lock:
        if "result" in box:
            return box["result"]  # type: ignore[return-value]
        box["gave_up"] = True
        return None
