"""Commands about the bot itself: approvals, approve, deny, freeze, thaw, policy reload.

Each one is audited like a VM command, refused ones included.
"""

from __future__ import annotations

from bot.approval.workflow import Approving, Refuse
from bot.commands import Command
from bot.hypervisor.fleet import no_host
from bot.policy import Policy, PolicyError, Request, Target
from bot.reply import Reply, Status
from bot.store.approvals import Approvals
from bot.store.audit import Actor, Audit, AuditDecision
from bot.store.freezes import FLEET, Freezes
from bot.times import hhmm

ADMIN_ACTIONS = frozenset({"approvals", "approve", "deny", "freeze", "thaw", "policy"})


class Admin:
    """Given only what it uses: the policy, the host names, its tables, the workflow, and how to refuse."""

    def __init__(
        self,
        *,
        policy: Policy,
        hosts: list[str],
        audit: Audit,
        freezes: Freezes,
        approvals: Approvals,
        approving: Approving,
        refuse: Refuse,
    ) -> None:
        self.policy, self.hosts, self.audit, self.freezes = policy, hosts, audit, freezes
        self.approvals, self.approving, self.refuse = approvals, approving, refuse

    def handle(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        name = cmd.action.name
        if name in ("approve", "deny"):
            return self.answer(name, cmd.targets[0], actor, str(cmd.flag("reason") or ""), cmd.text, cid)
        scope = cmd.targets[0] if name in ("freeze", "thaw") and cmd.targets else None
        if scope is not None and scope not in self.hosts:
            return self.refuse(actor, cid, cmd.text, name, Status.USAGE, no_host(scope, self.hosts))
        hosts = [scope] if scope else self.hosts
        targets = tuple(Target(h, "", "") for h in hosts) if name in ("freeze", "thaw") else ()
        decision = self.policy.decide(Request(actor.user, actor.channel, name, False, targets))
        if not decision.allowed:
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, f"refused: {decision.reason}")
        if name == "approvals":
            reply = self.listing()
        elif name == "freeze":
            reply = self.freeze(scope, actor, str(cmd.flag("reason") or ""))
        elif name == "thaw":
            reply = self.thaw(scope)
        else:
            reply = self.reload()
        self.audit.record(
            actor, cid, cmd.text, name, AuditDecision.ALLOWED, reply.status.value, reply.headline, host=scope
        )
        return reply

    def answer(self, kind: str, request_id: str, actor: Actor, reason: str, text: str, cid: str) -> Reply:
        """approve/deny from a command or a button click, audited either way."""
        flow = self.approving
        reply = flow.approve(request_id, actor) if kind == "approve" else flow.deny(request_id, actor, reason)
        decision = AuditDecision.REFUSED if reply.status is Status.REFUSED else AuditDecision.ALLOWED
        self.audit.record(actor, cid, text, kind, decision, reply.status.value, reply.headline)
        return reply

    def listing(self) -> Reply:
        self.approving.sweep()
        pending = self.approvals.pending()
        lines = []
        for req in pending:
            names = ", ".join(f"{t.host}/{t.name}" for t in req.targets)
            votes = f"{len(req.approvals)}/{req.needed} approvals"
            why = f" — {req.reason}" if req.reason else ""
            until = hhmm(req.expires_at)
            lines.append(f"{req.id}: {req.requester} {req.action} {names}{why} ({votes}, expires {until})")
        return Reply(Status.OK, f"{len(pending)} request(s) waiting for approval", lines)

    def freeze(self, scope: str | None, actor: Actor, reason: str) -> Reply:
        existing = self.freezes.freeze(scope or FLEET, actor.user, reason)
        if existing:
            return Reply(Status.OK, f"already {existing.line()}")
        made = next(f for f in self.freezes.active() if f.scope == (scope or FLEET))
        return Reply(Status.OK, f"{made.line()}; state changes are refused until /vm thaw", changed=True)

    def thaw(self, scope: str | None) -> Reply:
        lifted = self.freezes.thaw(scope)
        if not lifted:
            return Reply(Status.OK, f"host {scope} was not frozen" if scope else "nothing was frozen")
        still = [f.line() for f in self.freezes.active()]
        what = ", ".join("the whole fleet" if f.scope == FLEET else f"host {f.scope}" for f in lifted)
        return Reply(Status.OK, f"thawed {what}: state changes are allowed again", still, changed=True)

    def reload(self) -> Reply:
        reload = getattr(self.policy, "reload", None)
        if reload is None:
            return Reply(Status.REFUSED, "this bot has no policy file to reload (demo fleet or none configured)")
        try:
            return Reply(Status.OK, reload())
        except PolicyError as e:  # line and reason: keep the old rules
            return Reply(Status.FAILED, f"policy not reloaded; the old one stays in force: {e}")
