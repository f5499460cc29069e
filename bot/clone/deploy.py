"""``clone SOURCE NEW...`` and ``template create NAME --from VM`` in the command layer.

Both make VMs that do not exist yet, so they do not fit the one-VM path: the
policy sees the source (kind "vm") and every new name (kind "new") and must
allow both sides; each new VM is its own operation with its own audit row,
lock and result; above ``confirm_above`` new names the batch wants ``--yes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from bot import times
from bot.approval.preview import preview
from bot.approval.workflow import Approving
from bot.clone import metadata
from bot.clone.clone import Failed, Maker, fresh_uuid, plan
from bot.commands import Command
from bot.execution import Outcome, Refuser, TargetResult
from bot.hypervisor.errors import error_text
from bot.hypervisor.fleet import Fleet, Selection, VmRef, VmRow
from bot.hypervisor.lifecycle import Lifecycle, Progress, Refused
from bot.hypervisor.pool import HostDown
from bot.hypervisor.states import refusal
from bot.policy import NEW, Decision, Policy, Request, Target
from bot.reply import Reply, Status, error_id
from bot.store.audit import Actor, Audit, AuditDecision, AuditError
from bot.store.freezes import Freezes
from bot.store.locks import Locked, Locks

log = logging.getLogger(__name__)
Source = Callable[[Command], "VmRow | str"]  # the VM to copy, or why there is none


@dataclass
class Parts:
    """What the deploy path needs from the bot, and nothing more."""

    fleet: Fleet
    life: Lifecycle
    policy: Callable[[], Policy]  # asked each time: a reload may swap it
    audit: Audit
    locks: Locks
    freezes: Freezes
    approving: Approving
    refuse: Refuser  # audited refusals, the same as every other command path
    confirm_above: int


def now() -> str:
    return times.iso()


class Deploy:
    def __init__(self, parts: Parts, source: Source, new_name: Callable[[Command, VmRow, str], str]) -> None:
        self.p, self.source, self.new_name = parts, source, new_name

    def names(self, cmd: Command, row: VmRow) -> list[str]:
        """The domain names the command will make (a template version gets its own name)."""
        return [self.new_name(cmd, row, n) for n in cmd.new_names()]

    def request(self, cmd: Command, actor: Actor, row: VmRow) -> Request:
        ref = row.ref
        new = tuple(Target(ref.host, n, "", NEW) for n in self.names(cmd, row))
        return Request(actor.user, actor.channel, cmd.action.name, True, (Target(ref.host, ref.name, ref.uuid), *new))

    def refuse(
        self, actor: Actor, cid: str, cmd: Command, status: Status, line: str, row: VmRow | None = None
    ) -> Reply:
        return self.p.refuse(actor, cid, cmd.text, cmd.action.name, status, line, Selection([row]) if row else None)

    def handle(self, cmd: Command, actor: Actor, cid: str, progress: Progress | None) -> Reply:
        """Check everything that can be checked before anything is made; then run, or ask for approval."""
        found = self.source(cmd)
        if isinstance(found, str):
            return self.refuse(actor, cid, cmd, Status.REFUSED, found)
        row, names = found, self.names(cmd, found)
        if len(set(names)) != len(names):
            return self.refuse(actor, cid, cmd, Status.USAGE, "a new name is given twice", row)
        if why := self.taken(row.ref.host, names):
            return self.refuse(actor, cid, cmd, Status.REFUSED, why, row)
        decision = self.p.policy().decide(self.request(cmd, actor, row))
        if not decision.allowed:
            return self.refuse(actor, cid, cmd, Status.REFUSED, f"refused: {decision.reason}", row)
        if why := refusal(cmd.action.name, row.ref.name, row.state):
            return self.refuse(actor, cid, cmd, Status.REFUSED, why, row)
        if len(names) > self.p.confirm_above and not cmd.flag("yes"):
            line = (
                f"{cmd.action.name} would make {len(names)} VMs: {', '.join(names)}; add --yes to make all {len(names)}"
            )
            return self.refuse(actor, cid, cmd, Status.REFUSED, line, row)
        if cmd.flag("dry-run"):
            self.p.audit.record(
                actor,
                cid,
                cmd.text,
                cmd.action.name,
                AuditDecision.DRY_RUN,
                "ok",
                decision.reason,
                **row.ref.audit_fields(),
            )
            wait = (
                [f"would wait for {decision.approvals} approval(s) before anything runs"]
                if decision.needs_approval
                else []
            )
            return Reply(Status.OK, f"dry run: nothing was changed ({decision.reason})", [preview(cmd, row), *wait])
        if frozen := self.p.freezes.blocking(row.ref.host):
            return self.refuse(actor, cid, cmd, Status.REFUSED, frozen.line(), row)
        if decision.needs_approval:
            return self.p.approving.request(cmd, actor, cid, Selection([row]), decision)
        return self.execute(cmd, actor, cid, Selection([row]), decision, progress)

    def taken(self, host: str, names: list[str]) -> str | None:
        existing = {r.ref.name for r in self.p.fleet.inventory([host]).rows}
        clash = [n for n in names if n in existing]
        return f"{', '.join(clash)} already exist{'s' * (len(clash) == 1)} on {host}; pick new names" if clash else None

    def execute(
        self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision, progress: Progress | None
    ) -> Reply:
        """Each new VM its own audit row, written before anything runs; the grant is asked again for all of them."""
        row = sel.rows[0]
        again = self.p.policy().decide(self.request(cmd, actor, row))  # after an approval the new names count too
        if not again.allowed:
            return self.refuse(actor, cid, cmd, Status.REFUSED, f"refused: {again.reason}", row)
        names = self.names(cmd, row)
        uuids = {n: fresh_uuid() for n in names}
        ids: list[int] = []
        try:
            for n in names:
                ids.append(
                    self.p.audit.begin(
                        actor, cid, cmd.text, cmd.action.name, AuditDecision.ALLOWED, reason=decision.reason,
                        **VmRef(row.ref.host, uuids[n], n).audit_fields(),
                    )
                )  # fmt: skip
        except AuditError as e:
            self.p.audit.abandon(ids, str(e))
            raise
        note = progress or (lambda _m: None)
        results = [self.one(cmd, row.ref, n, uuids[n], i, note, actor.user) for n, i in zip(names, ids, strict=True)]
        done = sum(r.outcome is Outcome.DONE for r in results)
        lines = [r.line for r in results]
        status = Status.OK if done == len(results) else Status.FAILED
        if done == 0 and all(r.outcome is Outcome.REFUSED for r in results):
            status = Status.REFUSED
        if len(results) == 1:
            return Reply(status, lines[0], changed=bool(done))
        head = f"{cmd.action.name}: {done} of {len(results)} made" + (
            "" if status is Status.OK else f", {len(results) - done} not"
        )
        return Reply(status, head, lines, changed=bool(done))

    def one(
        self, cmd: Command, src: VmRef, name: str, new_uuid: str, row_id: int, progress: Progress, user: str
    ) -> TargetResult:
        """Make one VM under the locks of its source and its new name; its audit row is finished with the outcome."""
        ref = VmRef(src.host, new_uuid, name)
        try:
            if frozen := self.p.freezes.blocking(src.host):
                raise Refused(frozen.line())
            with (
                self.p.locks.hold(src.host, src.uuid, src.name, cmd.action.name, user),
                self.p.locks.hold(src.host, f"new:{name}", name, cmd.action.name, user),
                self.p.life.pool.change_slot(src.host),
            ):
                text = self._make(cmd, src, name, new_uuid, progress)
            if cmd.flag("start"):
                text += self._start(ref)
        except (Refused, Locked) as e:
            self.p.audit.finish(row_id, Outcome.REFUSED, str(e))
            return TargetResult(Outcome.REFUSED, f"{ref}: {e}")
        except (HostDown, libvirt.libvirtError, Failed) as e:
            eid = error_id()
            log.warning("%s %s failed [%s]: %s", cmd.action.name, ref, eid, e)
            self.p.audit.finish(row_id, Outcome.FAILED, error_text(e), eid)
            return TargetResult(Outcome.FAILED, f"{ref}: failed: {error_text(e)} (error {eid})")
        self.p.audit.finish(row_id, Outcome.DONE, text)
        return TargetResult(Outcome.DONE, f"{ref}: {text}")

    def _start(self, ref: VmRef) -> str:
        """Start a clone that was made; if it does not start, it is still made (and says why it did not)."""
        try:
            self.p.life.dom(ref, lambda d: d.create())
        except (HostDown, libvirt.libvirtError) as e:
            return f"; not started: {error_text(e)}"
        return "; started"

    def _make(self, cmd: Command, src: VmRef, name: str, new_uuid: str, progress: Progress) -> str:
        state = self.p.life.state(src)  # read again now, never trusted from when the command was typed
        if why := refusal(cmd.action.name, src.name, state):
            raise Refused(why)
        if why := self.taken(src.host, [name]):
            raise Refused(why)
        linked = bool(cmd.flag("linked"))
        mark = self.mark(cmd, src, name)
        made = self.p.life.pool.call(src.host, lambda c: plan(c, src, name, new_uuid, linked, mark))
        text = Maker(self.p.life.pool, made, progress).run()
        if isinstance(mark, metadata.TemplateMark):
            return f"version {mark.version} of template {mark.name}, {text.replace('cloned', 'copied', 1)}"
        return text

    def mark(self, cmd: Command, src: VmRef, name: str) -> metadata.CloneMark | metadata.TemplateMark:
        if cmd.action.name == "template":  # template create NAME: this VM is version N of NAME ("NAME-vN")
            version = int(name.rsplit("-v", 1)[1])
            return metadata.TemplateMark(cmd.new_names()[0], version, str(src), now(), ())
        xml = self.p.life.dom(src, lambda d: d.XMLDesc(0))
        tmpl = metadata.template(xml)
        return metadata.CloneMark(
            str(src), src.uuid, tmpl.name if tmpl else "", tmpl.version if tmpl else 0, bool(cmd.flag("linked"))
        )
