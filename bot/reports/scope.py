"""Whose eyes a report is for: the digest channel sees the fleet, a person sees what their grants cover.

The question is the policy's own (may this user ``report`` on this host or
VM?), so a report never shows more than ``/vm list`` would let them find out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bot.hypervisor.fleet import Inventory
from bot.policy import Policy, Target
from bot.store.approvals import ApprovalRequest
from bot.store.freezes import FLEET, Freeze


@dataclass
class Scope:
    who: str = ""  # "" = the whole fleet
    vm_ok: Callable[[str, str, str], bool] = lambda host, name, uuid: True
    host_ok: Callable[[str], bool] = lambda host: True
    _cache: dict = field(default_factory=dict)

    def vm(self, host: str, name: str, uuid: str = "") -> bool:
        key = (host, name, uuid)
        if key not in self._cache:
            self._cache[key] = self.vm_ok(host, name, uuid)
        return self._cache[key]

    def host(self, host: str) -> bool:
        """Host facts (memory, pools, versions) need the host as a whole, like `freeze HOST`."""
        if host not in self._cache:
            self._cache[host] = self.host_ok(host)
        return self._cache[host]


WHOLE_FLEET = Scope()


def for_user(policy: Policy, user: str, channel: str, action: str = "report") -> Scope:
    """The asker's view: each VM and host checked against the policy with the report action."""

    allowed = policy.allows(user, channel, action)  # the grants read once: a fleet of VMs is one question per host

    def vm_ok(host: str, name: str, uuid: str) -> bool:
        return allowed(Target(host, name, uuid))

    def host_ok(host: str) -> bool:
        return allowed(Target(host, "", ""))

    return Scope(user, vm_ok, host_ok)


@dataclass(frozen=True)
class Seen:
    """What App Home may show one viewer: hosts, VMs, freezes and pending requests inside their grants."""

    hosts: list[str]
    inventory: Inventory
    freezes: list[Freeze]
    pending: int


def cut_home(
    scope: Scope, names: list[str], inv: Inventory, freezes: list[Freeze], pending: list[ApprovalRequest]
) -> Seen:
    """The fleet as far as ``scope`` reaches: a host is shown when the viewer may see it whole or sees a
    VM on it; a user the policy grants nothing sees no host, VM, freeze or request."""
    rows = [r for r in inv.rows if scope.vm(r.ref.host, r.ref.name, r.ref.uuid)]
    with_vms = {r.ref.host for r in rows}
    hosts = [h for h in names if h in with_vms or scope.host(h)]
    shown = set(hosts)
    down = {h: why for h, why in inv.down.items() if h in shown and scope.host(h)}
    frozen = [f for f in freezes if (f.scope == FLEET and shown) or f.scope in shown]
    waiting = sum(
        1
        for req in pending
        if any(scope.vm(t.get("host", ""), t.get("name", ""), t.get("uuid", "")) for t in req.targets)
    )
    return Seen([h for h in hosts if h not in inv.down or h in down], Inventory(rows, down), frozen, waiting)
