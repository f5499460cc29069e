"""The one question the command layer asks before anything happens, and two answers to it.

``AllowAll`` exists only for the embedded demo fleet; a real config without a
policy file gets ``DenyAll``, so a missing file fails closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot import commands

# Slack's ID shapes, once: the policy file, the terminal's identity and the Slack adapter all check these.
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}\Z")
GROUP_ID = re.compile(r"^S[A-Z0-9]{2,20}\Z")
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,20}\Z")

# Every action a policy decides about, in the command table's order: a role granted `*` gets each of them.
ACTIONS: tuple[str, ...] = tuple(commands.ACTIONS)


def suggest(word: str, choices: list[str] | tuple[str, ...] | dict) -> str:
    """The command table's "did you mean" tail, for the policy file's error lines."""
    return commands.suggest(word, choices)


class PolicyError(Exception):
    """The policy cannot be used (file, line and reason, one line); the front door says it and exits 2."""


NEW = "new"  # a Target's kind for a VM the command will make (clone NEW, template create NAME)


@dataclass(frozen=True)
class Target:
    """A VM the request touches. ``kind`` "new" names one that does not exist yet (no UUID):
    grants are matched against its name like any other, so a grant scoped to ``dev-*`` can
    create ``dev-x`` and nothing else."""

    host: str
    vm: str
    uuid: str
    kind: str = "vm"


@dataclass(frozen=True)
class Request:
    user: str
    channel: str
    action: str
    changes_state: bool
    targets: tuple[Target, ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    needs_approval: bool = False
    grant: str = ""  # which grant(s) allowed or denied it, e.g. "grant #2 (line 9)"
    approvals: int = 0  # distinct approvers needed when needs_approval
    approvers: str = ""  # the role approvers need ("" = a role that allows the action)
    expires_s: int = 1800  # how long an approval request stays actionable


class Policy(Protocol):
    def decide(self, request: Request) -> Decision: ...

    def allows(self, user: str, channel: str, action: str) -> Callable[[Target], bool]:
        """May ``user`` do ``action`` on each of many targets (list, App Home, the digest)?

        The same answer ``decide`` gives for one target at a time, asked once per request:
        a policy may answer every target that its rules cannot tell apart from one decision.
        """
        ...

    def approver(self, user: str, request: Request) -> Decision:
        """May ``user`` approve this request? The reason is what a refused approver is told."""
        ...


ALWAYS = frozenset({"help"})


class AllowAll:
    """The demo's policy: the demo fleet is a toy that lives in one process."""

    def decide(self, request: Request) -> Decision:
        return Decision(True, "demo fleet: everyone may do everything")

    def allows(self, user: str, channel: str, action: str) -> Callable[[Target], bool]:
        return lambda _target: True

    def approver(self, user: str, request: Request) -> Decision:
        if user == request.user:
            return Decision(False, "the requester cannot approve their own request")
        return Decision(True, "demo fleet: anyone but the requester may approve")


class DenyAll:
    """Fail closed: everything but help is refused, with the reason given."""

    def __init__(self, reason: str = "no policy allows it") -> None:
        self.reason = reason

    def decide(self, request: Request) -> Decision:
        if request.action in ALWAYS:
            return Decision(True, "help is always allowed")
        return Decision(False, self.reason)

    def allows(self, user: str, channel: str, action: str) -> Callable[[Target], bool]:
        allowed = action in ALWAYS
        return lambda _target: allowed

    def approver(self, user: str, request: Request) -> Decision:
        return Decision(False, self.reason)
