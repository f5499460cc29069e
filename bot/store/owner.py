"""Which process owns a row, and whether it still runs: boot id, pid and the pid's start time.

Locks, leases and audit rows all name their owner this way, so whatever a
process that died (or a boot that is over) left behind is recognised at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

BOOT_ID = "/proc/sys/kernel/random/boot_id"


@cache
def boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): tells a reused pid apart."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    pid: int
    boot: str
    started: str

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, boot_id(), start_time(pid))

    def tag(self) -> str:
        """The owner as one text column: "boot pid started"."""
        return f"{self.boot} {self.pid} {self.started}"

    @classmethod
    def parse(cls, tag: str) -> Owner | None:
        parts = tag.split(" ")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(int(parts[1]), parts[0], parts[2])


def alive(owner: Owner) -> bool:
    """Is the owning process still running? Another boot's process is not; a zombie is not; a reused pid is not."""
    fields = _stat(owner.pid) if owner.boot == boot_id() else None
    if not fields or fields[0] in ("Z", "X"):
        return False
    return not owner.started or (len(fields) > 19 and fields[19] == owner.started)
