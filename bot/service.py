"""The command layer: text in, Reply out, the same for Slack and the terminal.

One path for every command: parse, resolve the targets, ask the policy, write
the audit row, then act. Anything refused on the way changes nothing and is
still audited.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable

import libvirt

from bot import reads
from bot.admin import ADMIN_ACTIONS, Admin
from bot.approval.preview import preview, sized
from bot.approval.workflow import Approving
from bot.backup import CATALOG_ACTIONS
from bot.backup.front import FRONT_ACTIONS, Backups, backup_jobs
from bot.clone import snapshots, templates
from bot.clone.deploy import Deploy, Parts
from bot.commands import Command, Targets, UsageError, help_text, parse
from bot.config import Config
from bot.execution import Execution, Refuser
from bot.hypervisor import screenshot
from bot.hypervisor.errors import error_text
from bot.hypervisor.events import StateLog
from bot.hypervisor.fleet import Fleet, Selection, VmRow
from bot.hypervisor.inventory import FIRST_WAIT, KeptInventory
from bot.hypervisor.lifecycle import Lifecycle, Progress
from bot.hypervisor.pool import HostDown, Pool
from bot.hypervisor.states import refusal
from bot.policy import Decision, Policy, Request, Target
from bot.reply import Reply, Status, error_id
from bot.reports.desk import DESK_ACTIONS, SYSTEM, Desk
from bot.schedule.engine import Outcome
from bot.store.approvals import ApprovalRequest, Approvals
from bot.store.audit import Actor, Audit, AuditDecision, AuditError, clip
from bot.store.db import Store
from bot.store.freezes import Freezes
from bot.store.locks import Locks
from bot.store.vms import VmTable
from bot.text import printable

log = logging.getLogger(__name__)
READS: dict[str, Callable[[Fleet, VmRow], Reply]] = {
    "state": reads.state,
    "info": reads.info,
    "ip": reads.ip,
    "dumpxml": reads.dumpxml,
    "screenshot": screenshot.screenshot,
    "snapshots": snapshots.listing,
}


class Bot:
    def __init__(self, config: Config, policy: Policy, pool: Pool | None = None, audit: Audit | None = None) -> None:
        self.config, self.policy = config, policy
        self.pool = pool or Pool(
            config.hosts, config.host_timeout, config.probe_interval, config.changes_per_host,
            open_hosts=config.open_hosts,
        )  # fmt: skip
        self.fleet = Fleet(self.pool)
        self.life = Lifecycle(self.pool, self.fleet)
        self.life.ops.update(snapshots.OPS)
        templates.guard(self.life.ops)  # templates never start; a base with linked clones is never deleted
        self.audit = audit or Audit(config.store_path)
        self.vms = VmTable(Store(self.audit, durable=False))  # the kept inventory: rows a power loss makes moot
        self.kept = KeptInventory(self.pool, self.fleet, self.vms)
        self.fleet.locate = self.kept.locate  # a bare name opens the host that holds it, not every host
        self.events = StateLog(self.pool, self.audit)  # lifecycle events with their times: `state` says since when
        self.store = Store(self.audit)  # approvals, locks, freezes: the audit's file, their own connection
        self.approvals, self.freezes = Approvals(self.store), Freezes(self.store)
        self.locks = Locks(Store(self.audit, durable=False))  # a lock outlives no reboot: its boot id says so
        self.on_request_change: list[Callable[[ApprovalRequest], None]] = []  # adapters update their message
        self.refuse = Refuser(self.audit, self.freezes)
        self.execute = Execution(self.audit, self.freezes, self.locks, self.life)
        self.approving = Approving(
            policy=policy,
            approvals=self.approvals,
            audit=self.audit,
            freezes=self.freezes,
            fleet=self.fleet,
            refuse=self.refuse,
            execute=self._run_allowed,
            listeners=self.on_request_change,
        )
        self.admin = Admin(
            policy=policy,
            hosts=self.pool.names,
            audit=self.audit,
            freezes=self.freezes,
            approvals=self.approvals,
            approving=self.approving,
            refuse=self.refuse,
        )
        self.sources = templates.Sources(self.fleet)
        parts = Parts(
            self.fleet, self.life, lambda: self.policy, self.audit, self.locks, self.freezes, self.approving,
            self.refuse, config.confirm_above,
        )  # fmt: skip
        self.deploy = Deploy(parts, self.sources, self.sources.new_name)  # clone, template create: VMs still to make
        self.backups = Backups(  # the catalog lives in the audit's file; a crashed run's leftovers are swept
            config=config,
            pool=self.pool,
            fleet=self.fleet,
            policy=policy,
            audit=self.audit,
            db=self.store,
            freezes=self.freezes,
            locks=self.locks,
            approving=self.approving,
        )
        self.desk = Desk(  # reports, the schedule, migrate-check; the scheduled jobs
            config=config,
            fleet=self.fleet,
            policy=policy,
            audit=self.audit,
            store=self.store,
            events=self.events,
            approvals=self.approvals,
            freezes=self.freezes,
            locks=self.locks,
            catalog=self.backups.catalog if config.backups_dir else None,
            kept=self.kept,
        )
        if config.backups_dir:
            self.desk.backup_jobs = {job: self._scheduled(text) for job, text in backup_jobs(config).items()}
        self.execute.runs["backup"] = self.backups.run  # `backup VM` runs like any VM change, under its lock
        for stop in ("shutdown", "destroy"):  # a live backup of the VM is cancelled first, never waited for
            self.execute.before[stop] = self.backups.before_stop
        self.approving.recover()  # requests a dead process was running become interrupted, never re-run
        self.audit.recover()  # so do the operations it was running

    # -- for adapters: approval buttons and the approvals message ---------------------

    def approve(self, request_id: str, actor: Actor) -> Reply:
        """An Approve click: counted once per person; the last approval needed runs the request, once."""
        return self.handle(shlex.join(["approve", request_id]), actor)

    def deny(self, request_id: str, actor: Actor, reason: str = "") -> Reply:
        """A Deny click (or the requester withdrawing): nothing runs."""
        return self.handle(shlex.join(["deny", request_id, *(["--reason", reason] if reason else [])]), actor)

    def pending_requests(self) -> list[ApprovalRequest]:
        self.approving.sweep()
        return self.approvals.pending()

    def request(self, request_id: str) -> ApprovalRequest | None:
        """A request's render data: requester, action, targets (host, name, uuid, state, preview), status, approvers."""
        return self.approvals.get(request_id)

    def reload_policy(self, actor: Actor) -> Reply:
        """SIGHUP: whoever may signal the process may reload; audited like `/vm policy reload`."""
        reply = self.admin.reload()
        self.audit.record(
            actor, error_id(), "SIGHUP", "policy", AuditDecision.ALLOWED, reply.status.value, reply.headline
        )
        return reply

    def sweep_expired(self) -> list[str]:
        """Expire pending requests whose time is up (the lease holder calls this every minute)."""
        return self.approving.sweep()

    def _frozen(self, sel: Selection) -> str | None:
        for host in dict.fromkeys(r.host for r in sel.refs):
            if found := self.freezes.blocking(host):
                return found.line()
        return None

    def handle(self, text: str, actor: Actor, progress: Progress | None = None) -> Reply:
        """Answer one ``/vm`` command; never raises, every outcome is a Reply."""
        cid, action = error_id(), "?"
        raw, text = text, printable(text)  # not UTF-8: refused by the parser; audited escaped
        try:
            try:
                if raw != text:
                    raise UsageError("the command is not valid UTF-8 text; nothing was run")
                cmd = parse(raw)
                action = cmd.action.name
                return self._dispatch(cmd, actor, cid, progress)
            except UsageError as e:  # from the parser, or from help about an unknown action
                return self.refuse(actor, cid, text, action, Status.USAGE, str(e))
        except AuditError as e:
            return Reply(Status.FAILED, str(e))
        except Exception:
            eid = error_id()
            log.exception("command failed [%s] %r", eid, text)
            self._safe_record(actor, cid, text, action, AuditDecision.ALLOWED, "failed", "internal error", error_id=eid)
            return Reply(Status.FAILED, f"something went wrong; nothing more was done (error {eid})", error_id=eid)

    def _dispatch(self, cmd: Command, actor: Actor, cid: str, progress: Progress | None) -> Reply:
        name = cmd.action.name
        if name == "help":
            return Reply(
                Status.OK,
                "vmbot commands" if not cmd.targets else "",
                help_text(cmd.targets[0] if cmd.targets else None),
            )
        if name in ADMIN_ACTIONS:
            return self.admin.handle(cmd, actor, cid)
        if name in DESK_ACTIONS:
            return self.desk.handle(cmd, actor, cid)
        if name in FRONT_ACTIONS:  # they name backups in the catalog, not live VMs
            return self.backups.handle(cmd, actor, cid)
        if cmd.new_names():
            return self.deploy.handle(cmd, actor, cid, progress)
        if cmd.action.targets in (Targets.ONE, Targets.MANY, Targets.VM_NAME, Targets.VM_SNAPSHOT, Targets.TEMPLATE):
            return self._on_vms(cmd, actor, cid, progress)
        decision = self.policy.decide(Request(actor.user, actor.channel, name, cmd.action.changes_state))
        if not decision.allowed:
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, f"refused: {decision.reason}")
        if name == "list":
            reply = self._list(cmd, actor)
        elif name == "hosts":
            reply = reads.hosts(self.fleet)
        elif name == "templates":
            reply = templates.listing(self.sources, self._may_list(actor))
        else:
            reply = reads.audit(self.audit, cmd, self.pool.names)
        self.audit.record(actor, cid, cmd.text, name, AuditDecision.ALLOWED, reply.status.value, reply.headline)
        return reply

    def _list(self, cmd: Command, actor: Actor) -> Reply:
        """From the kept inventory when someone keeps it; else from the hosts, saying why.

        Only the VMs the policy lets this requester ``list``, judged per VM as ``state`` is.
        """

        may = self._may_list(actor)
        host = cmd.flag("host")
        snap = self.kept.snapshot([str(host)] if host and host in self.pool.names else None, wait=FIRST_WAIT)
        if snap is not None:
            return reads.listing(self.fleet, cmd, snap.inventory, snap.note(), may)
        return reads.listing(self.fleet, cmd, note=self._said(self.kept.fresh()[1]), may=may)

    def _may_list(self, actor: Actor) -> Callable[[VmRow], bool]:
        """Whether the policy lets this requester ``list`` one VM, judged per VM as ``state`` is."""

        allowed = self.policy.allows(actor.user, actor.channel, "list")  # once per request, not per VM

        def may(row: VmRow) -> bool:
            return allowed(Target(row.ref.host, row.ref.name, row.ref.uuid))

        return may

    def _said(self, note: str) -> str:
        """The demo fleet lives in one process: where its answers come from is no news."""
        return "" if self.config.demo else note

    def _on_vms(self, cmd: Command, actor: Actor, cid: str, progress: Progress | None) -> Reply:
        backup_all = cmd.action.name == "backup" and cmd.flag("all")
        sel = self.backups.select_all() if backup_all else self.fleet.resolve(cmd.vm_args())
        reply = self._on_selection(cmd, actor, cid, progress, sel)
        if reply.changed:
            self.kept.touch(sorted({r.host for r in sel.refs}))
        if sel.note and not reply.note:
            reply.note = self._said(sel.note)
        return reply

    def _on_selection(self, cmd: Command, actor: Actor, cid: str, progress: Progress | None, sel: Selection) -> Reply:
        name = cmd.action.name
        if sel.problems:
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, "; ".join(sel.problems))
        if cmd.action.targets.single_vm and len(sel.rows) > 1:
            names = ", ".join(str(r) for r in sel.refs)
            return self.refuse(
                actor,
                cid,
                cmd.text,
                name,
                Status.USAGE,
                f"{name} takes one VM; '{cmd.vm_args()[0]}' matches {len(sel.rows)}: {names}",
            )
        decision = self.policy.decide(self._request(cmd, actor, sel))
        if not decision.allowed:
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, f"refused: {decision.reason}", sel)
        if not cmd.action.changes_state:
            return self._read(cmd, actor, cid, sel.rows[0])
        if cmd.flag("dry-run"):  # a preview changes nothing, so it needs no --yes
            return self._dry_run(cmd, actor, cid, sel, decision)
        if sel.globbed and len(sel.rows) > self.config.confirm_above and not cmd.flag("yes"):
            line = (
                f"{clip(' '.join(cmd.targets), 80)} selects {len(sel.rows)} VMs: {some(sel.refs)}; "
                f"add --yes to {name} all {len(sel.rows)}"
            )
            each = f"not confirmed: one of {len(sel.rows)} VMs selected without --yes"
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, line, sel, each)
        if why := self._precheck(cmd, sel):
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, why, sel)
        if frozen := self._frozen(sel):
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, frozen, sel)
        if decision.needs_approval:
            return self.approving.request(cmd, actor, cid, sel, decision)
        return self.execute(cmd, actor, cid, sel, decision, progress)

    def _run_allowed(
        self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision, progress: Progress | None
    ) -> Reply:
        """What an approved request runs: restore and prune name catalog entries (bot.backup), clones and
        template versions make VMs, the rest change them."""
        if cmd.action.name in CATALOG_ACTIONS:
            return self.backups.execute(cmd, actor, cid, decision)
        if cmd.new_names():
            return self.deploy.execute(cmd, actor, cid, sel, decision, progress)
        return self.execute(cmd, actor, cid, sel, decision, progress)

    def _precheck(self, cmd: Command, sel: Selection) -> str | None:
        """Checks beyond the state rules that need the VM's XML (snapshots), before anyone is asked to approve."""
        if cmd.action.name not in snapshots.OPS:
            return None
        try:
            return snapshots.check(self.life, sel.rows[0].ref, cmd)
        except (HostDown, libvirt.libvirtError) as e:
            return f"{sel.rows[0].ref}: {error_text(e)}"

    def _request(self, cmd: Command, actor: Actor, sel: Selection) -> Request:
        targets = tuple(Target(r.host, r.name, r.uuid) for r in sel.refs)
        return Request(actor.user, actor.channel, cmd.action.name, cmd.action.changes_state, targets)

    def _read(self, cmd: Command, actor: Actor, cid: str, row: VmRow) -> Reply:
        name, ref = cmd.action.name, row.ref
        why = refusal(name, ref.name, row.state)
        if why:
            return self.refuse(actor, cid, cmd.text, name, Status.REFUSED, why, Selection([row]))
        try:
            if name == "state":
                reply = reads.state(self.fleet, row, self.events.since(ref, row.state))
            else:
                reply = READS[name](self.fleet, row)
        except (HostDown, libvirt.libvirtError) as e:
            reply = Reply(Status.FAILED, f"{ref}: {error_text(e)}")
        self.audit.record(
            actor,
            cid,
            cmd.text,
            name,
            AuditDecision.ALLOWED,
            reply.status.value,
            reply.headline,
            **ref.audit_fields(),
        )
        return reply

    def _dry_run(self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision) -> Reply:
        name = cmd.action.name
        lines = [preview(cmd, r) for r in sized(self.fleet, sel.rows)]
        if frozen := self._frozen(sel):
            lines.append(f"would be refused: {frozen}")
        elif decision.needs_approval:
            lines.append(f"would wait for {decision.approvals} approval(s) before anything runs")
        with self.audit.batch():
            for row in sel.rows:
                self.audit.record(
                    actor, cid, cmd.text, name, AuditDecision.DRY_RUN, "ok", decision.reason, **row.ref.audit_fields()
                )
        return Reply(Status.OK, f"dry run: nothing was changed ({decision.reason})", lines)

    def _scheduled(self, text: str) -> Callable[[str], Outcome]:
        """A scheduled backup: the one command path as vmbot:scheduler (its grant, audit rows, locks, freezes)."""

        def run(note: str) -> Outcome:
            reply = self.handle(text + (f" --reason {shlex.quote(note)}" if note else ""), SYSTEM)
            result = {Status.OK: "ok", Status.REFUSED: "refused", Status.PENDING: "refused"}.get(reply.status, "failed")
            return Outcome(result, reply.headline)

        return run

    def _safe_record(
        self,
        actor: Actor,
        cid: str,
        text: str,
        action: str,
        decision: AuditDecision,
        result: str,
        detail: str,
        **row: str,
    ) -> None:
        try:
            self.audit.record(actor, cid, text, action, decision, result, detail, **row)
        except AuditError:
            log.error("could not audit a failed command [%s]", row.get("error_id"))

    def close(self) -> None:
        """Close libvirt connections and every sqlite handle; a long test run must not leak them."""
        self.kept.close()
        self.events.close()
        self.pool.close()
        for store in (self.events.store, self.locks.db, self.store, self.vms.db):
            store.close()
        self.audit.close()


def some(refs: list, shown: int = 10) -> str:
    """The first few targets and how many more: a line (and its audit rows) never lists thousands."""
    names = ", ".join(str(r) for r in refs[:shown])
    return names + (f" and {len(refs) - shown} more" if len(refs) > shown else "")
