"""The YAML role policy: who may do what, where, and what waits for a second person.

Deny by default. A grant names users or user groups, a role, host and VM
globs and (optionally) the channels where its commands may be typed. Every
Decision names the grant that allowed it or says why each candidate grant did
not, so a refused operator knows whom to ask instead of guessing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bot.policy import ALWAYS, GROUP_ID, NEW, Decision, PolicyError, Request, Target
from policies.schema import ALL, DEFAULT_EXPIRES, Grant, Parsed, Rule, Rules, read

log = logging.getLogger(__name__)
ANYONE_GRANTED = frozenset({"help", "approvals"})
NEEDS_APPROVAL = frozenset(
    {"destroy", "reset", "revert", "snapshot-delete", "restore", "prune"}
)  # they throw state away or overwrite
GroupMembers = Callable[[str], set[str]]


def load_policy(path: str | Path, group_members: GroupMembers | None = None) -> Policy:
    """Read and check the file; raise PolicyError (one line) if anything is wrong."""
    p = Path(path)
    return Policy(p, _rules(p), group_members)


def _rules(path: Path) -> Rules:
    if not path.exists():
        raise PolicyError(f"{path}: no such policy file")
    parsed: Parsed = read(path)
    if parsed.errors:
        more = f" (and {len(parsed.errors) - 1} more; run: vmbot policy check {path})" if len(parsed.errors) > 1 else ""
        raise PolicyError(parsed.errors[0] + more)
    for w in parsed.warnings:
        log.warning("policy: %s", w)
    return parsed.rules


def _where(t: Target) -> str:
    if t.kind == NEW:
        return f"new VM {t.host}/{t.vm}"
    return f"host {t.host}" if t.vm == "" else f"{t.host}/{t.vm}"


class Policy:
    """A loaded policy; ``reload()`` swaps in a freshly read file (and forgets cached groups) at once."""

    def __init__(
        self, path: Path, rules: Rules, group_members: GroupMembers | None = None, group_ttl: float = 300.0
    ) -> None:
        self.path, self._rules = path, rules
        self.group_members = group_members
        self.group_ttl = group_ttl
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._failed: dict[str, str] = {}  # group -> why its last lookup failed; said in every deny it may cause
        self._lock = threading.Lock()

    @property
    def rules(self) -> Rules:
        return self._rules

    @property
    def max_targets(self) -> int | None:
        return self._rules.max_targets

    def reload(self) -> str:
        """Re-read the file; on error keep the old rules and raise PolicyError."""
        rules = _rules(self.path)
        with self._lock:
            self._rules, self._groups, self._failed = rules, {}, {}
        groups = sorted({w for g in rules.grants for w in g.who if GROUP_ID.match(w)})
        known = sum(len(self.members(group)) for group in groups)  # the groups are read again now, too
        return (
            f"policy reloaded from {self.path}: {len(rules.roles)} role(s), {len(rules.grants)} grant(s), "
            f"{len(groups)} user group(s) with {known} member(s)"
        )

    # -- who is who ----------------------------------------------------------

    def members(self, group: str) -> frozenset[str]:
        """A user group's members, cached; a resolver that fails means nobody (fail closed), and denies say so."""
        now = time.monotonic()
        with self._lock:
            hit = self._groups.get(group)
        if hit and now - hit[0] < self.group_ttl:
            return hit[1]
        try:
            if self.group_members is None:
                raise LookupError("this policy was given no way to look up user groups")
            found = frozenset(self.group_members(group))
        except Exception as e:
            log.warning("cannot resolve user group %s: %s; treating it as empty", group, e)
            with self._lock:
                self._failed[group] = str(e)
            return hit[1] if hit else frozenset()
        with self._lock:
            self._groups[group] = (now, found)
            self._failed.pop(group, None)
        return found

    def unresolved(self, reason: str) -> str:
        """``reason``, plus which user groups could not be looked up: a deny they may cause is never silent."""
        with self._lock:
            failed = dict(self._failed)
        groups = dict.fromkeys(w for g in self._rules.grants for w in g.who if w in failed)
        if not groups:
            return reason
        return reason + " (" + "; ".join(f"user group {g} could not be resolved: {failed[g]}" for g in groups) + ")"

    def names(self, grant: Grant, user: str) -> bool:
        if user in grant.who:
            return True
        return any(GROUP_ID.match(w) and user in self.members(w) for w in grant.who)

    def grants_of(self, user: str) -> list[Grant]:
        return [g for g in self._rules.grants if self.names(g, user)]

    # -- the decision ----------------------------------------------------------

    def decide(self, request: Request) -> Decision:
        return self._decide(request, self.grants_of(request.user))

    def allows(self, user: str, channel: str, action: str) -> Callable[[Target], bool]:
        """One request's judge of many targets: ``decide`` per target, asked once per key it can tell apart.

        The grants naming the user are read once (group members included), and every target is judged
        against those same grants. When none of them that includes ``action`` limits VMs (``vms: ['*']``),
        a decision depends on the host alone, so a host's 100 VMs cost one decision, not 100;
        otherwise each (host, VM name) is decided on its own. Deny by default is ``decide``'s.
        """
        mine = self.grants_of(user)
        by_host = all(ALL in g.vms for g in mine if action in g.actions)
        seen: dict[str | tuple[str, str], bool] = {}

        def allowed(target: Target) -> bool:
            key = target.host if by_host else (target.host, target.vm)
            if key not in seen:
                seen[key] = self._decide(Request(user, channel, action, False, (target,)), mine).allowed
            return seen[key]

        return allowed

    def _decide(self, request: Request, mine: list[Grant]) -> Decision:
        if request.action in ALWAYS:
            return Decision(True, "help is always allowed")
        if not mine:
            return Decision(False, self.unresolved(f"denied by default: no grant names {request.user}"))
        if request.action in ANYONE_GRANTED:
            return Decision(True, f"{request.action} is allowed to anyone with a grant ({mine[0].label})", grant="")
        used: list[Grant] = []
        for target in request.targets or (None,):
            grant, misses = self._first(mine, request.action, request.channel, target)
            if grant is None:
                what = f"{request.action} {_where(target)}" if target else request.action
                shown = "; ".join(misses[:3]) + ("; …" if len(misses) > 3 else "")
                reason = self.unresolved(f"denied: no grant lets {request.user} {what} ({shown})")
                return Decision(False, reason, grant=misses[0].split(":")[0])
            if grant not in used:
                used.append(grant)
        labels = ", ".join(g.label for g in used)
        reason = f"{labels} allow{'s' if len(used) == 1 else ''} {request.action}"
        rule = self.approval_rule(request)
        if rule is None:
            return Decision(True, reason, grant=labels)
        who = f"role {rule.approvers}" if rule.approvers else f"a role that allows {request.action}"
        return Decision(
            True,
            f"{reason}; needs {rule.count} approval(s) by {who}{rule.why}",
            needs_approval=True,
            grant=labels,
            approvals=rule.count,
            approvers=rule.approvers or "",
            expires_s=rule.expires,
        )

    def _first(
        self, grants: list[Grant], action: str, channel: str, target: Target | None
    ) -> tuple[Grant | None, list[str]]:
        """The first grant allowing ``action`` on ``target`` from ``channel``, or why each one doesn't."""
        misses = []
        for g in grants:
            why = self._mismatch(g, action, target, channel)
            if why is None:
                return g, []
            misses.append(f"{g.label}: {why}")
        return None, misses

    @staticmethod
    def _mismatch(g: Grant, action: str, target: Target | None, channel: str | None) -> str | None:
        if action not in g.actions:
            return f"{g.role} does not include {action}"
        if channel is not None and g.channels is not None and channel not in g.channels:
            return f"only in {', '.join(g.channels) or 'no channel'}"
        if target is not None and not g.host_ok(target.host):
            return f"host {target.host} is not in {', '.join(g.hosts) or 'no hosts'}"
        if target is not None and not g.vm_ok(target.vm):
            return f"{target.vm or 'the whole host'} is not in vms {', '.join(g.vms) or '(none)'}"
        return None

    def approval_rule(self, request: Request) -> Rule | None:
        """The first rule naming the action; NEEDS_APPROVAL actions default to one approval; wide globs need one."""
        for rule in self._rules.approvals:
            if request.action in rule.actions:
                return rule if rule.count > 0 else None
        if request.action in NEEDS_APPROVAL:
            return Rule(0, frozenset({request.action}), None, 1, DEFAULT_EXPIRES)
        limit = self._rules.max_targets
        if request.changes_state and limit is not None and len(request.targets) > limit:
            why = f" ({len(request.targets)} targets is more than {limit})"
            return Rule(0, frozenset({request.action}), None, 1, DEFAULT_EXPIRES, why)
        return None

    # -- approving ---------------------------------------------------------------

    def approver(self, user: str, request: Request) -> Decision:
        """May ``user`` approve this request? Channels do not apply; the requester never may."""
        if user == request.user:
            return Decision(False, "the requester cannot approve their own request")
        rule = self.approval_rule(request) or Rule(0, frozenset(), None, 1, DEFAULT_EXPIRES)
        mine = self.grants_of(user)
        need = f"role {rule.approvers}" if rule.approvers else f"a role with {request.action}"
        for target in request.targets or (None,):
            if not any(self._approves(g, rule, request.action, target) for g in mine):
                where = f" on {_where(target)}" if target else ""
                return Decision(
                    False, self.unresolved(f"{user} may not approve {request.action}{where}: needs {need} there")
                )
        return Decision(True, f"{user} may approve ({need} on every target)")

    def _approves(self, g: Grant, rule: Rule, action: str, target: Target | None) -> bool:
        if rule.approvers:
            if rule.approvers not in g.roles:
                return False
        elif action not in g.actions:
            return False
        return target is None or (g.host_ok(target.host) and g.vm_ok(target.vm))

    # -- explaining ---------------------------------------------------------------

    def explain(self, request: Request) -> list[str]:
        """Each grant naming the user, and whether it would allow the request; then the decision."""
        lines = []
        for g in self.grants_of(request.user):
            misses = [self._mismatch(g, request.action, t, request.channel) for t in request.targets or (None,)]
            bad = next((m for m in misses if m), None)
            lines.append(f"{g.label}: " + (f"does not apply: {bad}" if bad else "allows it"))
        decision = self.decide(request)
        lines.append(("ALLOWED: " if decision.allowed else "DENIED: ") + decision.reason)
        if decision.allowed:
            lines.append(
                f"needs {decision.approvals} approval(s), request expires after {decision.expires_s // 60} min"
                if decision.needs_approval
                else "runs at once (no approval needed)"
            )
        return lines
