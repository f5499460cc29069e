"""The approval workflow: ask, approve or deny, re-check, run once.

Chat-agnostic: the Slack adapter calls ``Bot.approve``/``Bot.deny`` for button
clicks and renders ``ApprovalRequest`` rows; the terminal types
``/vm approve ID``. Both end up here and get the same answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import libvirt

from bot.approval.preview import preview, sized
from bot.backup import CATALOG_ACTIONS
from bot.commands import Command, parse
from bot.hypervisor.fleet import Fleet, Selection, VmRef, VmRow
from bot.hypervisor.lifecycle import Progress
from bot.hypervisor.pool import HostDown
from bot.hypervisor.states import refusal
from bot.policy import NEW, Decision, Policy, Request, Target
from bot.reply import Reply, Status, error_id
from bot.store.approvals import OPEN, ApprovalEvent, ApprovalRequest, Approvals, ApprovalStatus, ApprovalTarget
from bot.store.audit import Actor, Audit, AuditDecision
from bot.store.freezes import Freezes
from bot.times import hhmm

log = logging.getLogger(__name__)
Listener = Callable[[ApprovalRequest], None]


class Refuse(Protocol):
    """Audit a refusal and say it (``bot.execution.Refuser``)."""

    def __call__(
        self, actor: Actor, cid: str, text: str, action: str, status: Status, line: str, sel: Selection | None = None
    ) -> Reply: ...


class Execute(Protocol):
    """Run an allowed state change on the selected VMs (``bot.execution.Execution``)."""

    def __call__(
        self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision, progress: Progress | None
    ) -> Reply: ...


def policy_request(req: ApprovalRequest) -> Request:
    """Every name the request will touch: its stored VMs and the ones it will make (clone NEW, template
    create NAME, restore --as NEW), so an approver scoped to the source cannot approve a copy outside it."""
    targets = tuple(Target(t.host, t.name, t.uuid) for t in req.targets)
    return Request(req.requester, req.channel, req.action, True, targets + new_targets(req))


def new_targets(req: ApprovalRequest) -> tuple[Target, ...]:
    """The VMs the command will make, on the host of its (first) target: they exist only in its text."""
    if not req.targets:
        return ()
    cmd = parse(req.text)
    names = list(cmd.new_names())
    made = cmd.flag("as") if req.action == "restore" else None
    if isinstance(made, str):
        names.append(made)
    return tuple(Target(req.targets[0].host, n, "", NEW) for n in dict.fromkeys(names))


class Approving:
    """Given only what it uses: the policy, its tables, the fleet, and how to refuse and to execute."""

    def __init__(
        self,
        *,
        policy: Policy,
        approvals: Approvals,
        audit: Audit,
        freezes: Freezes,
        fleet: Fleet,
        refuse: Refuse,
        execute: Execute,
        listeners: list[Listener],
    ) -> None:
        self.policy, self.store, self.audit, self.freezes, self.fleet = policy, approvals, audit, freezes, fleet
        self.refuse, self.execute, self.listeners = refuse, execute, listeners

    # -- asking ------------------------------------------------------------------

    def request(self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision) -> Reply:
        """Store a pending request bound to host + UUID of each target; nothing runs yet."""
        name = cmd.action.name
        bad = [why for r in sel.rows if (why := refusal(name, str(r.ref), r.state))]
        if bad:
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, "; ".join(bad), sel)
        rows = sized(self.fleet, sel.rows)
        with self.audit.batch():  # one transaction for every target's row
            targets = [self._target(cmd, actor, cid, r, decision) for r in rows]
        return self.request_targets(cmd, actor, targets, decision)

    def request_targets(self, cmd: Command, actor: Actor, targets: list[ApprovalTarget], decision: Decision) -> Reply:
        """Store a pending request for targets already audited (each has its audit_id and preview)."""
        name = cmd.action.name
        req = self.store.create(
            expires_at=time.time() + decision.expires_s,
            requester=actor.user,
            channel=actor.channel,
            source=actor.source,
            unix_user=actor.unix_user,
            action=name,
            text=cmd.text,
            reason=str(cmd.flag("reason") or ""),
            targets=targets,
            needed=max(1, decision.approvals),
            approvers_role=decision.approvers,
            decision=decision.reason,
            audit_id=targets[0].audit_id,
        )
        self.changed(req)
        return Reply(Status.PENDING, f"waiting for approval: request {req.id}", self.summary(req), request_id=req.id)

    def waiting_row(self, cmd: Command, actor: Actor, cid: str, decision: Decision, **target: str) -> int:
        """The audit row of one target waiting for approval; its request carries the row's id to its end."""
        return self.audit.begin(
            actor, cid, cmd.text, cmd.action.name, AuditDecision.NEEDS_APPROVAL, reason=decision.reason, **target
        )

    def _target(self, cmd: Command, actor: Actor, cid: str, row: VmRow, decision: Decision) -> ApprovalTarget:
        ref = row.ref
        audit_id = self.waiting_row(cmd, actor, cid, decision, **ref.audit_fields())
        return ApprovalTarget(
            ref.host, ref.uuid, ref.name, row.state.name, row.vcpus, row.memory_kib, preview(cmd, row), audit_id
        )

    def summary(self, req: ApprovalRequest) -> list[str]:
        who = f"role {req.approvers_role}" if req.approvers_role else f"someone allowed to {req.action}"
        lines = [f"{req.requester} asks to {req.action} {len(req.targets)} VM(s):", *req.preview]
        if req.reason:
            lines.append(f"reason: {req.reason}")
        lines.append(f"needs {req.needed} approval(s) by {who}, not the requester; expires {hhmm(req.expires_at)}")
        lines.append(f"policy: {req.decision}")
        lines.append(f"approve: /vm approve {req.id} · deny: /vm deny {req.id}")
        return lines

    # -- answering ----------------------------------------------------------------

    def approve(self, request_id: str, actor: Actor) -> Reply:
        req = self._open(request_id)
        if isinstance(req, Reply):
            return req
        if actor.user == req.requester:
            return Reply(Status.REFUSED, f"you asked for request {req.id}; someone else must approve it")
        check = self._approver(actor.user, req)
        if not check.allowed:
            return Reply(Status.REFUSED, f"request {req.id}: {check.reason}")
        if not self.store.vote(req.id, actor.user):
            return self._not_voted(req.id, actor)
        self.store.event(req.id, ApprovalEvent.APPROVE, actor.user, check.reason, req.audit_id)
        votes = self.store.votes(req.id)
        if len(votes) < req.needed:
            fresh = self._get(req.id)
            self.changed(fresh)
            left = req.needed - len(votes)
            head = f"request {req.id}: approved by {actor.user}; {left} more needed"
            return Reply(Status.PENDING, head, request_id=req.id)
        if not self.store.move(req.id, OPEN, ApprovalStatus.APPROVED, by=", ".join(u for u, _ in votes[: req.needed])):
            return self.closed(self._get(req.id))
        return self._run(self._get(req.id), actor)

    def _not_voted(self, request_id: str, actor: Actor) -> Reply:
        fresh = self._get(request_id)
        if fresh.status == OPEN and actor.user in fresh.approvers:
            left = fresh.needed - len(fresh.approvals)
            head = f"you already approved request {fresh.id}; {left} more needed"
            return Reply(Status.PENDING, head, request_id=fresh.id)
        if fresh.expired():
            self.expire(fresh.id)
            fresh = self._get(request_id)
        return self.closed(fresh)

    def deny(self, request_id: str, actor: Actor, reason: str = "") -> Reply:
        """Approvers may deny; the requester may withdraw their own request."""
        req = self._open(request_id)
        if isinstance(req, Reply):
            return req
        if actor.user != req.requester:
            check = self._approver(actor.user, req)
            if not check.allowed:
                return Reply(Status.REFUSED, f"request {req.id}: {check.reason.replace('approve', 'deny', 1)}")
        why = reason or ("withdrawn by the requester" if actor.user == req.requester else "")
        if not self.store.move(req.id, OPEN, ApprovalStatus.DENIED, by=actor.user, result=why):
            return self.closed(self._get(req.id))
        self.store.event(req.id, ApprovalEvent.DENY, actor.user, why, req.audit_id)
        self._finish_audit(req, ApprovalStatus.DENIED, f"denied by {actor.user}" + (f": {why}" if why else ""))
        self.changed(self._get(req.id))
        return Reply(Status.OK, f"request {req.id} denied by {actor.user}; nothing was run", request_id=req.id)

    def _open(self, request_id: str) -> ApprovalRequest | Reply:
        req = self.store.get(request_id)
        if req is None:
            return Reply(Status.REFUSED, f"no approval request '{request_id}' (see /vm approvals)")
        if req.expired():
            self.expire(req.id)
            req = self._get(req.id)
        return req if req.status == OPEN else self.closed(req)

    def closed(self, req: ApprovalRequest) -> Reply:
        """What a late click is told, by the request's status."""
        by = req.decided_by or ", ".join(req.approvers)
        s = ApprovalStatus
        text = {
            s.APPROVED: f"already approved by {by}; running now",
            s.EXECUTING: f"already approved by {by}; running now",
            s.DONE: f"already approved by {by} and run: {req.result.splitlines()[0] if req.result else 'done'}",
            s.DENIED: f"denied by {req.decided_by}" + (f" ({req.result})" if req.result else "") + "; nothing was run",
            s.EXPIRED: f"expired at {hhmm(req.expires_at)} before enough approvals; nothing was run; ask again",
            s.INTERRUPTED: "interrupted: the bot stopped while running it; it is never re-run on its own. "
            "Check the VM and ask again",
            s.REFUSED: f"approved by {by} but refused on the final check: {req.result}",
        }.get(req.status, str(req.status))
        return Reply(Status.REFUSED, f"request {req.id}: {text}", request_id=req.id)

    def _approver(self, user: str, req: ApprovalRequest) -> Decision:
        return self.policy.approver(user, policy_request(req))

    # -- running ------------------------------------------------------------------

    def _run(self, req: ApprovalRequest, approver: Actor) -> Reply:
        """The one caller that won the compare-and-set: re-check everything, then run exactly once."""
        try:
            problem, rows, decision = self._recheck(req)
            if problem:
                self.store.move(req.id, ApprovalStatus.APPROVED, ApprovalStatus.REFUSED, result=problem)
                self.store.event(req.id, ApprovalEvent.REFUSED, approver.user, problem, req.audit_id)
                self._finish_audit(
                    req, ApprovalStatus.REFUSED, f"approved by {req.decided_by}; refused on re-check: {problem}"
                )
                self.changed(self._get(req.id))
                head = f"request {req.id}: approved, but nothing was run: {problem}"
                return Reply(Status.REFUSED, head, request_id=req.id)
            self.store.move(req.id, ApprovalStatus.APPROVED, ApprovalStatus.EXECUTING)
            requester = Actor(req.requester, req.channel, req.unix_user, req.source)
            reply = self.execute(parse(req.text), requester, error_id(), Selection(rows), decision, None)
        except Exception:
            for running in (ApprovalStatus.EXECUTING, ApprovalStatus.APPROVED):
                self.store.move(req.id, running, ApprovalStatus.INTERRUPTED, result="failed: internal error")
            self.changed(self._get(req.id))
            raise
        ran = reply.changed or reply.status is Status.OK  # else refused: nothing ran (lock, state)
        final = ApprovalStatus.DONE if ran else ApprovalStatus.REFUSED
        self.store.move(req.id, ApprovalStatus.EXECUTING, final, result=reply.text()[:2000])
        self.store.event(req.id, ApprovalEvent.EXECUTE, approver.user, reply.headline, req.audit_id)
        self._finish_audit(req, ApprovalStatus.APPROVED, f"approved by {req.decided_by}; {reply.headline}")
        self.changed(self._get(req.id))
        head = f"request {req.id} approved by {req.decided_by}: {reply.headline}"
        return Reply(reply.status, head, reply.lines, changed=reply.changed, request_id=req.id)

    def _recheck(self, req: ApprovalRequest) -> tuple[str, list[VmRow], Decision]:
        """Freeze, the requester's grant, and each VM by UUID, as they are now."""
        for host in dict.fromkeys(t.host for t in req.targets):
            if frozen := self.freezes.blocking(host):
                return frozen.line(), [], Decision(False, "")
        decision = self.policy.decide(policy_request(req))
        if not decision.allowed:
            return f"the requester's grant no longer allows it ({decision.reason})", [], decision
        rows, problems = [], []
        for t in req.targets if req.action not in CATALOG_ACTIONS else ():  # those re-check when they run
            ref = VmRef(t.host, t.uuid, t.name)
            try:
                row = self.fleet.row(ref)
            except (HostDown, libvirt.libvirtError) as e:
                problems.append(self._gone(ref, e))
                continue
            why = refusal(req.action, str(ref), row.state)
            if why:
                problems.append(f"{why} (it was {t.state} when asked)")
            rows.append(row)
        approved = f"approved by {req.decided_by} (request {req.id}); {decision.grant or decision.reason}"
        return "; ".join(problems), rows, Decision(True, approved)

    def _gone(self, ref: VmRef, e: Exception) -> str:
        if isinstance(e, HostDown):
            return str(e)
        now = [r for r in self.fleet.inventory([ref.host]).rows if r.ref.name == ref.name]
        if now:
            new = now[0].ref.uuid
            return (
                f"{ref} is not the VM that was asked about: it was undefined and a new one (UUID {new}) took its name"
            )
        return f"{ref} (UUID {ref.uuid}) no longer exists"

    def _finish_audit(self, req: ApprovalRequest, result: str, detail: str) -> None:
        for t in req.targets:
            if t.audit_id:
                self.audit.finish(t.audit_id, result, detail)

    # -- housekeeping -------------------------------------------------------------

    def expire(self, request_id: str) -> bool:
        if not self.store.expire(request_id):
            return False
        req = self._get(request_id)
        self.store.event(req.id, ApprovalEvent.EXPIRE, "", f"expired at {hhmm(req.expires_at)}", req.audit_id)
        self._finish_audit(
            req, ApprovalStatus.EXPIRED, f"expired after {len(req.approvals)} of {req.needed} approval(s)"
        )
        self.changed(req)
        return True

    def sweep(self) -> list[str]:
        """Expire every pending request whose time is up; returns their ids."""
        return [rid for rid in self.store.due() if self.expire(rid)]

    def recover(self) -> list[str]:
        """At start-up: requests a dead process was running become interrupted, never re-run."""
        done = []
        for rid, status in self.store.orphans():
            if self.store.move(rid, status, ApprovalStatus.INTERRUPTED, result="the bot stopped while it was running"):
                req = self._get(rid)
                self.store.event(rid, ApprovalEvent.INTERRUPTED, "", "owner process is gone", req.audit_id)
                self._finish_audit(req, ApprovalStatus.INTERRUPTED, "the bot stopped while it was running; not re-run")
                self.changed(req)
                done.append(rid)
        return done

    def _get(self, request_id: str) -> ApprovalRequest:
        req = self.store.get(request_id)
        assert req is not None, request_id
        return req

    def changed(self, req: ApprovalRequest) -> None:
        for listener in list(self.listeners):
            try:
                listener(req)
            except Exception:
                log.exception("request listener failed for %s", req.id)
