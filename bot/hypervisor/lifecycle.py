"""State-changing operations on one VM, each checked against the state rules first.

The state is read again right before acting (never trusted from when the
command was typed), and every call names the VM by UUID.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import libvirt

from bot.commands import Command
from bot.hypervisor import console
from bot.hypervisor.fleet import Fleet, VmRef
from bot.hypervisor.pool import Pool
from bot.hypervisor.states import State, refusal

T = TypeVar("T")
PRESS_EVERY = 10.0  # seconds between ACPI presses while `shutdown --timeout` waits
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Done:
    """What an operation did, and the boot log when it read one (start --console)."""

    text: str
    console: list[str] | None = None


class Refused(Exception):
    """The action does not apply now; the message says why and what would."""


def cancelled(progress: Progress) -> bool:
    """Adapters may give their progress callback a ``cancelled`` Event (a Cancel button)."""
    event = getattr(progress, "cancelled", None)
    return isinstance(event, threading.Event) and event.is_set()


class Watch:
    """Lifecycle events for one VM, subscribed before acting so no event is missed."""

    def __init__(self, pool: Pool, ref: VmRef) -> None:
        self.stopped = threading.Event()
        self._unsubscribe = pool.subscribe(self._on_event)
        self._ref = ref

    def _on_event(self, host: str, uuid: str, event: int, _detail: int) -> None:
        if (host, uuid) == (self._ref.host, self._ref.uuid) and event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self.stopped.set()

    def close(self) -> None:
        self._unsubscribe()


class Lifecycle:
    def __init__(self, pool: Pool, fleet: Fleet) -> None:
        self.pool, self.fleet = pool, fleet
        self.ops = dict(OPS)  # features (snapshots, templates) add their operations here
        self.console_ready = console.DEFAULT_READY  # start --console reads the boot log up to this line
        self.console_timeout = console.DEFAULT_TIMEOUT

    def run(self, ref: VmRef, command: Command, progress: Progress | None = None) -> Done:
        """Check the VM's current state against the rules, then act."""
        action = command.action.name
        with self.pool.change_slot(ref.host):
            state = self.state(ref)
            why = refusal(action, ref.name, state)
            if why:
                raise Refused(why)
            done = self.ops[action](self, ref, command, progress or (lambda _m: None))
            return done if isinstance(done, Done) else Done(done)

    def state(self, ref: VmRef) -> State:
        return State(*self.dom(ref, lambda d: d.state()))

    def dom(self, ref: VmRef, fn: Callable[[libvirt.virDomain], T], timeout: float | None = None) -> T:
        return self.pool.call(ref.host, lambda c: fn(c.lookupByUUIDString(ref.uuid)), timeout)

    def wait_stopped(
        self, ref: VmRef, watch: Watch, timeout: float, progress: Progress, press: Callable[[], object] | None = None
    ) -> bool:
        """Wait for the STOPPED event; re-read the state each second in case an event was lost.

        ``press`` is called again every PRESS_EVERY seconds: a guest that is still booting (right after
        a reboot, say) loses an ACPI press, and a second one works. It never escalates.
        """
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5
        next_press = time.monotonic() + PRESS_EVERY
        while (left := deadline - time.monotonic()) > 0:
            if press and time.monotonic() >= next_press:
                press()
                next_press += PRESS_EVERY
            if watch.stopped.wait(min(left, 1.0)) or not self.state(ref).active:
                return True
            if cancelled(progress):
                state = self.state(ref)
                waited = f"stopped waiting after {timeout - left:.0f}s (cancelled)"
                raise Refused(f"{waited}; {ref.name} is {state.name}; nothing was forced")
            if time.monotonic() >= next_note:
                progress(f"waiting for {ref.name} to power off ({timeout - left:.0f}s of {timeout:g}s)")
                next_note += 5
        return watch.stopped.is_set() or not self.state(ref).active


def _start(lc: Lifecycle, ref: VmRef, cmd: Command, progress: Progress) -> str | Done:
    force = bool(cmd.flag("force-boot"))
    saved = lc.dom(ref, lambda d: d.hasManagedSaveImage(0))
    if force and saved:  # discard explicitly: not every driver takes VIR_DOMAIN_START_FORCE_BOOT (test:///)
        lc.dom(ref, lambda d: d.managedSaveRemove(0))
    if cmd.flag("console"):
        return _start_console(lc, ref, progress, _started(saved, force))
    lc.dom(ref, lambda d: d.create())
    return _started(saved, force)


def _started(saved: bool, force: bool) -> str:
    if saved:
        return "started (managed-save image discarded)" if force else "started from its managed-save image"
    return "started"


def _start_console(lc: Lifecycle, ref: VmRef, progress: Progress, said: str) -> Done:
    """Start with the console attached; the wait for the ready line is here, not on a pool worker."""
    attached, note = lc.pool.call(ref.host, lambda c: console.start_attached(c, ref.uuid, lc.console_ready))
    if attached is None:
        return Done(f"{said}; {note}", [])
    progress(f"{ref.name} started; reading its console")
    try:
        lines, note = console.wait_ready(attached, lc.console_timeout)
    finally:
        lc.pool.call(ref.host, lambda _c: attached.close())
    return Done(f"{said}; {note}", lines)


def _simple(call: Callable[[libvirt.virDomain], object], said: str) -> Callable:
    def op(lc: Lifecycle, ref: VmRef, _cmd: Command, _p: Progress) -> str:
        lc.dom(ref, call)
        return said

    return op


def _shutdown(lc: Lifecycle, ref: VmRef, cmd: Command, progress: Progress) -> str:
    timeout = float(t) if isinstance(t := cmd.flag("timeout"), str) else None  # checked by the parser
    watch = Watch(lc.pool, ref)
    try:
        started = time.monotonic()
        lc.dom(ref, lambda d: d.shutdown())
        if timeout is None:
            state = lc.state(ref)
            return (
                "shut off"
                if not state.active
                else f"shutdown requested; {ref.name} is {state.name} until the guest powers off"
            )
        again = f", pressing the power button again every {PRESS_EVERY:g}s" if timeout > PRESS_EVERY else ""
        progress(f"asked {ref.name} to power off; waiting up to {timeout:g}s{again}")
        if lc.wait_stopped(ref, watch, timeout, progress, lambda: _press(lc, ref)):
            took = f"shut off after {time.monotonic() - started:.1f}s"
            progress(f"{ref.name} {took}")  # the adapter updates its message now, on the event
            return took
        state = lc.state(ref)
        raise Refused(
            f"{ref.name} is still {state.name} after {timeout:g}s: the guest did not power off. "
            f"Nothing was forced; `destroy {ref.host}/{ref.name}` would power it off"
        )
    finally:
        watch.close()


def _press(lc: Lifecycle, ref: VmRef) -> None:
    """The ACPI power button again; a guest that stopped in between answers "not running", which is fine."""
    try:
        lc.dom(ref, lambda d: d.shutdown())
    except libvirt.libvirtError:
        if lc.state(ref).active:
            raise


UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
BASIC_UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA


def _undefine_dom(dom: libvirt.virDomain) -> None:
    """Drop the metadata that would block undefine; drivers that lack a flag get the basic set."""
    try:
        dom.undefineFlags(UNDEFINE_FLAGS)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        dom.undefineFlags(BASIC_UNDEFINE_FLAGS)


def _undefine(lc: Lifecycle, ref: VmRef, cmd: Command, _p: Progress) -> str:
    disks = disk_sources(lc.dom(ref, lambda d: d.XMLDesc(0)))
    lc.dom(ref, _undefine_dom)
    if not cmd.flag("remove-storage"):
        return "undefined (its disks were kept)" if disks else "undefined"
    removed, kept = [], []
    for pool, name in disks:
        try:
            lc.pool.call(ref.host, lambda c, p=pool, n=name: _volume(c, p, n).delete(0))
            removed.append(name)
        except libvirt.libvirtError:
            kept.append(name)
    text = f"undefined; removed {len(removed)} volume(s)"
    return text + (f"; kept {', '.join(kept)} (not a pool volume)" if kept else "")


def _volume(conn: libvirt.virConnect, pool: str | None, name: str) -> libvirt.virStorageVol:
    if pool is None:
        return conn.storageVolLookupByPath(name)
    return conn.storagePoolLookupByName(pool).storageVolLookupByName(name)


def disk_sources(domain_xml: str) -> list[tuple[str | None, str]]:
    """The domain's disks (not CD-ROMs) as (pool, volume) or (None, path)."""
    root = ET.fromstring(domain_xml)
    out: list[tuple[str | None, str]] = []
    for disk in root.iterfind("./devices/disk[@device='disk']"):
        source = disk.find("source")
        if source is None:
            continue
        if source.get("pool") and source.get("volume"):
            out.append((source.get("pool"), source.get("volume", "")))
        elif path := source.get("file") or source.get("dev"):
            out.append((None, path))
    return out


def _autostart(lc: Lifecycle, ref: VmRef, cmd: Command, _p: Progress) -> str:
    want = not cmd.flag("disable")
    word = "enabled" if want else "disabled"
    if bool(lc.dom(ref, lambda d: d.autostart())) == want:
        return f"autostart was already {word}"
    lc.dom(ref, lambda d: d.setAutostart(int(want)))
    return f"autostart {word}"


OPS: dict[str, Callable[[Lifecycle, VmRef, Command, Progress], str | Done]] = {
    "start": _start,
    "suspend": _simple(lambda d: d.suspend(), "paused"),
    "resume": _simple(lambda d: d.resume(), "resumed"),
    "managedsave": _simple(lambda d: d.managedSave(0), "saved to disk and stopped (start restores it)"),
    "reboot": _simple(lambda d: d.reboot(0), "reboot requested"),
    "reset": _simple(lambda d: d.reset(0), "reset"),
    "shutdown": _shutdown,
    "destroy": _simple(lambda d: d.destroy(), "destroyed (powered off at once)"),
    "undefine": _undefine,
    "autostart": _autostart,
}
