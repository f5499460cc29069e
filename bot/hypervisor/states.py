"""Domain states as virsh names them, and the one table of which action applies when.

The names and reasons mirror ``virsh domstate --reason`` so operators read the
same words they already know.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import libvirt

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "idle",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
STATE_CODES = {name: code for code, name in STATE_NAMES.items()}  # "shut off" -> 5: stored rows, --state

REASONS: dict[int, tuple[str, ...]] = {
    libvirt.VIR_DOMAIN_RUNNING: (
        "unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
        "migration canceled", "save canceled", "event wakeup", "crashed",
        "post-copy",
    ),
    libvirt.VIR_DOMAIN_BLOCKED: ("unknown",),
    libvirt.VIR_DOMAIN_PAUSED: (
        "unknown", "user", "migrating", "saving", "dumping", "I/O error",
        "watchdog", "from snapshot", "shutting down", "creating snapshot",
        "crashed", "starting up", "post-copy", "post-copy failed",
    ),
    libvirt.VIR_DOMAIN_SHUTDOWN: ("unknown", "user"),
    libvirt.VIR_DOMAIN_SHUTOFF: (
        "unknown", "shutdown", "destroyed", "crashed", "migrated", "saved",
        "failed", "from snapshot", "daemon",
    ),
    libvirt.VIR_DOMAIN_CRASHED: ("unknown", "panicked"),
    libvirt.VIR_DOMAIN_PMSUSPENDED: ("unknown",),
}  # fmt: skip

RUNNING = libvirt.VIR_DOMAIN_RUNNING
PAUSED = libvirt.VIR_DOMAIN_PAUSED
SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF
CRASHED = libvirt.VIR_DOMAIN_CRASHED
ACTIVE = frozenset(
    {
        RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED,
        PAUSED,
        libvirt.VIR_DOMAIN_SHUTDOWN,
        libvirt.VIR_DOMAIN_PMSUSPENDED,
    }
)
INACTIVE = frozenset({SHUTOFF, CRASHED, libvirt.VIR_DOMAIN_NOSTATE})


@dataclass(frozen=True, slots=True)
class State:
    """A domain's state with its reason, comparable and printable like virsh."""

    code: int
    reason: int = 0

    @property
    def name(self) -> str:
        return STATE_NAMES.get(self.code, "no state")

    @property
    def reason_name(self) -> str:
        names = REASONS.get(self.code, ("unknown",))
        return names[self.reason] if 0 <= self.reason < len(names) else "unknown"

    @property
    def crashed(self) -> bool:
        """virsh shows a killed QEMU as ``shut off (crashed)``; treat both alike."""
        return self.code == CRASHED or (self.code == SHUTOFF and self.reason_name == "crashed")

    @property
    def active(self) -> bool:
        return self.code in ACTIVE

    def __str__(self) -> str:
        return f"{self.name} ({self.reason_name})"


@lru_cache(maxsize=512)
def state_of(code: int, reason: int = 0) -> State:
    """One shared State per (code, reason): 100,000 kept VMs hold a dozen State objects, not 100,000."""
    return State(code, reason)


@dataclass(frozen=True)
class Rule:
    """Which states an action applies to, and how to say so when it doesn't."""

    states: frozenset[int]
    wants: str


RULES: dict[str, Rule] = {
    "start": Rule(INACTIVE, "a shut-off VM"),
    "suspend": Rule(frozenset({RUNNING, libvirt.VIR_DOMAIN_BLOCKED}), "a running VM"),
    "resume": Rule(frozenset({PAUSED}), "a paused VM"),
    "managedsave": Rule(frozenset({RUNNING, libvirt.VIR_DOMAIN_BLOCKED, PAUSED}), "a running or paused VM"),
    "reboot": Rule(frozenset({RUNNING, libvirt.VIR_DOMAIN_BLOCKED}), "a running VM"),
    "reset": Rule(frozenset({RUNNING, libvirt.VIR_DOMAIN_BLOCKED, PAUSED}), "a running or paused VM"),
    "shutdown": Rule(frozenset({RUNNING, libvirt.VIR_DOMAIN_BLOCKED}), "a running VM"),
    "destroy": Rule(ACTIVE, "a running or paused VM"),
    "undefine": Rule(INACTIVE, "a shut-off VM (destroy or shut it down first)"),
    "clone": Rule(INACTIVE, "a shut-off VM (the disks of a running VM would be copied torn)"),
    "template": Rule(INACTIVE, "a shut-off VM"),
    "ip": Rule(ACTIVE, "a running VM"),
    "screenshot": Rule(ACTIVE, "a running VM"),
}


def refusal(action: str, vm: str, state: State) -> str | None:
    """Why ``action`` does not apply to a VM in ``state``, or None if it does."""
    rule = RULES.get(action)
    if rule is None or state.code in rule.states:
        return None
    return f"{vm} is {state.name}; {action} applies to {rule.wants}"


def applicable(state: State, actions: list[str]) -> list[str]:
    """The actions (in the given order) that the state rules allow now."""
    return [a for a in actions if refusal(a, "", state) is None]
