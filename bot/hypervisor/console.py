"""A guest's serial console during boot: start paused, attach, resume, read to the ready line.

The guest is started paused so that the console is attached before the first
byte is written; otherwise the start of the boot log (the part that says why a
boot fails) is gone before anyone reads it. The stream is non-blocking and is
fed by libvirt's event loop (bot/hypervisor/pool.py runs it), so no pool worker waits on a
guest that is slow to boot: the caller waits on a threading.Event instead.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import libvirt

from bot.hypervisor.errors import error_text

# A line our test guest prints when it is up, or a getty's login prompt.
DEFAULT_READY = re.compile(r"READY|\blogin:\s*$")
DEFAULT_TIMEOUT = 60.0
MAX_BYTES = 1 << 20  # a guest spamming its console cannot fill our memory
MAX_LINES = 400  # what a reply carries; the adapter trims further for its medium
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")
WAKE = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_HANGUP | libvirt.VIR_STREAM_EVENT_ERROR


def merge_logs(logs: list[tuple[str, list[str]]]) -> list[str] | None:
    """Boot logs of the VMs of one command: one as it is, several prefixed with their VM."""
    if not logs:
        return None
    if len(logs) == 1:
        return logs[0][1]
    return [f"{vm} | {line}" for vm, lines in logs for line in lines]


@dataclass
class BootLog:
    """Bytes from the console until the ready line, hangup, error or the caller's deadline."""

    ready: re.Pattern[str] = DEFAULT_READY
    data: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)
    found: bool = False
    problem: str = ""

    def feed(self, chunk: bytes) -> None:
        self.data.extend(chunk[: max(0, MAX_BYTES - len(self.data))])
        if any(self.ready.search(line) for line in self.lines(complete_only=True)[-50:]):
            self.found = True
            self.done.set()
        elif len(self.data) >= MAX_BYTES:
            self.problem = f"the console wrote more than {MAX_BYTES // 1024} KiB before a ready line"
            self.done.set()

    def lines(self, complete_only: bool = False) -> list[str]:
        text = self.data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        parts = text.split("\n")
        if complete_only:
            parts = parts[:-1]  # a ready line counts once it is complete
        return [ANSI.sub("", p) for p in parts]

    def tail(self) -> list[str]:
        """The lines worth showing: up to and including the ready line, at most MAX_LINES."""
        lines = [line for line in self.lines() if line.strip()]
        if self.found:
            end = next((i for i, line in enumerate(lines) if self.ready.search(line)), len(lines) - 1)
            lines = lines[: end + 1]
        return lines[-MAX_LINES:]


class Console:
    """An open console stream on a domain; read from the event loop, closed by whoever waits."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain, log: BootLog) -> None:
        self.log = log
        self.stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.stream.eventAddCallback(WAKE, self._on_event, None)

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            self._drain(stream)
        if events & (libvirt.VIR_STREAM_EVENT_HANGUP | libvirt.VIR_STREAM_EVENT_ERROR):
            self.log.problem = self.log.problem or "the console closed before a ready line"
            self.log.done.set()

    def _drain(self, stream: libvirt.virStream) -> None:
        while not self.log.done.is_set():
            try:
                chunk = stream.recv(8192)
            except libvirt.libvirtError as e:
                self.log.problem = f"console read failed: {error_text(e, 160)}"
                self.log.done.set()
                return
            if chunk == -2:  # nothing more for now: wait for the next READABLE
                return
            if not chunk:
                self.log.problem = self.log.problem or "the console closed before a ready line"
                self.log.done.set()
                return
            self.log.feed(chunk)

    def close(self) -> None:
        """Detach; the guest keeps running. Errors here are the console's, never the start's."""
        for step in (self.stream.eventRemoveCallback, self.stream.abort):
            try:
                step()
            except libvirt.libvirtError:
                pass


def start_attached(conn: libvirt.virConnect, uuid: str, ready: re.Pattern[str]) -> tuple[Console | None, str]:
    """Start the domain with its console attached from the first byte; runs on a pool worker.

    Returns the open console (or None) and a note for the user when the host
    cannot give a console (libvirt's test driver cannot). The VM is started
    either way, because the user asked to start it; the console is extra.
    """
    dom = conn.lookupByUUIDString(uuid)
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as e:
        if dom.isActive():
            raise
        dom.create()  # this driver cannot start paused: start plainly, say so
        return None, f"console not available here ({error_text(e, 160)})"
    try:
        console = Console(conn, dom, BootLog(ready))
    except libvirt.libvirtError as e:
        dom.resume()
        return None, f"console not available here ({error_text(e, 160)})"
    try:
        dom.resume()
    except libvirt.libvirtError:
        console.close()
        raise
    return console, ""


def wait_ready(console: Console, timeout: float) -> tuple[list[str], str]:
    """Wait (not on a pool worker) for the ready line; returns the lines and a note. The caller closes."""
    started = time.monotonic()
    console.log.done.wait(timeout)
    log = console.log
    if log.found:
        return log.tail(), f"ready after {time.monotonic() - started:.1f}s"
    return log.tail(), log.problem or f"no ready line within {timeout:g}s (the VM is running)"
