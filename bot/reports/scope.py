"""Whose eyes a report is for: the digest channel sees the fleet, a person sees what their grants cover.

The question is the policy's own (may this user ``report`` on this host or
VM?), so a report never shows more than ``/vm list`` would let them find out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bot.policy import Policy, Request, Target


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

    def vm_ok(host: str, name: str, uuid: str) -> bool:
        return policy.decide(Request(user, channel, action, False, (Target(host, name, uuid),))).allowed

    def host_ok(host: str) -> bool:
        return policy.decide(Request(user, channel, action, False, (Target(host, "", ""),))).allowed

    return Scope(user, vm_ok, host_ok)
