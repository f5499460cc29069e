"""Running an allowed state change, and refusing one: the two outcomes every command path shares.

Both the direct path (``Bot.handle``) and an approved request
(``bot/approval/workflow.py``) end here, so a VM change is written to the audit
trail, locked, checked against freezes and reported the same way whoever
asked. They get these as callables and never the Bot itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import libvirt

from bot.backup.files import BackupError
from bot.commands import Command
from bot.hypervisor.console import merge_logs
from bot.hypervisor.errors import error_text
from bot.hypervisor.fleet import Selection, VmRef, VmRow
from bot.hypervisor.lifecycle import Done, Lifecycle, Progress, Refused
from bot.hypervisor.pool import HostDown
from bot.policy import Decision
from bot.reply import Reply, Status, error_id
from bot.store.audit import Actor, Audit, AuditDecision, AuditError
from bot.store.freezes import Freezes
from bot.store.locks import Locked, Locks

log = logging.getLogger(__name__)
Run = Callable[[VmRef, Command, Progress | None], Done]


class Outcome(StrEnum):
    """How one target ended; the value is what its audit row's ``result`` says."""

    DONE = "ok"
    REFUSED = "refused"  # nothing ran: state, freeze or lock
    FAILED = "failed"


@dataclass(frozen=True)
class TargetResult:
    """One VM's outcome, the line the user reads, and the boot log when one was read."""

    outcome: Outcome
    line: str
    console: list[str] | None = None
    lost_host: str = ""  # the host stopped answering (down, or its connection broke during the call)


class Refuser:
    """A refusal: audited (one row per target), and the active freezes noted when that may be why."""

    def __init__(self, audit: Audit, freezes: Freezes) -> None:
        self.audit, self.freezes = audit, freezes

    def __call__(
        self,
        actor: Actor,
        cid: str,
        text: str,
        action: str,
        status: Status,
        line: str,
        sel: Selection | None = None,
        each: str = "",
    ) -> Reply:
        """One row per target; rows after the first hold ``each`` (or the line), capped: never a flood."""
        refs = sel.refs if sel else [None]
        with self.audit.batch():
            for i, ref in enumerate(refs):
                detail = line if i == 0 or not each else each
                self.audit.record(
                    actor,
                    cid,
                    text,
                    action,
                    AuditDecision.REFUSED,
                    status.value,
                    detail,
                    **(ref.audit_fields() if ref else {}),
                )
        notes = [f.line() for f in self.freezes.active()] if status is Status.REFUSED else []
        return Reply(status, line, [n for n in notes if n != line])


class Execution:
    """An allowed state change on the selected VMs: audit rows first, then each VM under its lock."""

    def __init__(self, audit: Audit, freezes: Freezes, locks: Locks, life: Lifecycle) -> None:
        self.audit, self.freezes, self.locks, self.life = audit, freezes, locks, life
        self.runs: dict[str, Run] = {}  # actions run elsewhere than the lifecycle (backup), same audit and lock
        self.before: dict[str, Callable[[VmRef], str]] = {}  # before taking the lock: what the reply should add

    def __call__(
        self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision, progress: Progress | None
    ) -> Reply:
        name = cmd.action.name
        rows = self._begin(cmd, actor, cid, sel, decision)
        run = lambda r, r_id: self._one(cmd, r, r_id, progress, actor.user)  # noqa: E731
        if len(rows) == 1:  # the common case: no thread hand-off
            results = [run(sel.rows[0], rows[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(16, len(rows))) as ex:
                results = list(ex.map(run, sel.rows, rows))
        done = sum(r.outcome is Outcome.DONE for r in results)
        lines = [r.line for r in results]
        boot = merge_logs(
            [(str(row.ref), r.console) for row, r in zip(sel.rows, results, strict=True) if r.console is not None]
        )
        if done == len(results):
            status = Status.OK
        else:
            status = Status.REFUSED if all(r.outcome is Outcome.REFUSED for r in results) else Status.FAILED
        if len(results) == 1:
            return Reply(status, lines[0], changed=bool(done), console=boot)
        head = f"{name}: {done} of {len(results)} done" + (
            "" if status is Status.OK else f", {len(results) - done} not"
        )
        if lost := sorted({r.lost_host for r in results if r.lost_host}):
            head += f"; {', '.join(lost)} stopped answering (unreachable)"
        return Reply(status, head, lines, changed=bool(done), console=boot)

    def _begin(self, cmd: Command, actor: Actor, cid: str, sel: Selection, decision: Decision) -> list[int]:
        """Every row is written before anything runs; a failure part-way leaves none 'running'."""
        rows: list[int] = []
        with self.audit.batch():  # one transaction: all the rows or none (a failure rolls back, nothing runs)
            for r in sel.rows:
                rows.append(
                    self.audit.begin(
                        actor,
                        cid,
                        cmd.text,
                        cmd.action.name,
                        AuditDecision.ALLOWED,
                        reason=decision.reason,
                        **r.ref.audit_fields(),
                    )
                )
        return rows

    def _one(self, cmd: Command, row: VmRow, row_id: int, progress: Progress | None, user: str = "") -> TargetResult:
        """Run on one VM under its lock; the audit row is finished with the outcome."""
        ref = row.ref
        try:
            if frozen := self.freezes.blocking(ref.host):
                raise Refused(frozen.line())
            note = self.before[cmd.action.name](ref) if cmd.action.name in self.before else ""
            with self.locks.hold(ref.host, ref.uuid, ref.name, cmd.action.name, user):
                done = self.runs.get(cmd.action.name, self.life.run)(ref, cmd, progress)
            done = Done(done.text + note, done.console) if note else done
        except (Refused, Locked) as e:
            return TargetResult(Outcome.REFUSED, f"{ref}: {e}" + self._close(row_id, Outcome.REFUSED, str(e)))
        except (HostDown, libvirt.libvirtError, BackupError) as e:
            eid = error_id()
            log.warning("%s %s failed [%s]: %s", cmd.action.name, ref, eid, e)
            why, lost = _failure(e, ref)
            note = self._close(row_id, Outcome.FAILED, why, eid)
            return TargetResult(Outcome.FAILED, f"{ref}: failed: {why} (error {eid}){note}", lost_host=lost)
        if note := self._close(row_id, Outcome.DONE, done.text):
            return TargetResult(Outcome.FAILED, f"{ref}: {done.text}{note}", done.console)
        return TargetResult(Outcome.DONE, f"{ref}: {done.text}", done.console)

    def _close(self, row_id: int, result: str, detail: str, eid: str | None = None) -> str:
        """Complete the operation's one row; if the store refuses, say so (no second row is added)."""
        try:
            self.audit.finish(row_id, result, detail, eid)
        except AuditError as e:
            eid = error_id()
            log.error("audit row %s could not be completed [%s]: %s", row_id, eid, e)
            return f"; but {e}: its row stays open until the bot restarts (error {eid})"
        return ""


def _failure(e: Exception, ref: VmRef) -> tuple[str, str]:
    """What a target's failure says, and the host when it stopped answering.

    A connection that breaks during a call fails with an error of libvirt's RPC layer
    ("End of file while reading data", "client socket is closed"): the request may or
    may not have reached the host, so the line says the outcome is unknown instead of
    passing libvirt's words on as if the host had refused.
    """
    if isinstance(e, HostDown):
        return error_text(e), e.host
    if isinstance(e, libvirt.libvirtError) and e.get_error_domain() == libvirt.VIR_FROM_RPC:
        why = f"{ref.host}: the connection was lost during the call ({error_text(e)}); it may or may not have happened"
        return f"{why}: ask `state {ref}`", ref.host
    return error_text(e), ""
