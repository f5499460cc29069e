"""The backup actions as operations like the others: policy, freeze, lock, audit row, approval.

``backup`` runs through the bot's VM path (globs, --yes, dry run, lock per
VM) and lands in ``Backups.run``. ``backups``, ``verify``, ``restore`` and
``prune`` name backups in the catalog, not live VMs (a VM to restore is gone),
so they come here whole; restore and prune wait for an approval by default.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bot.backup import configbackup, inpool, retention
from bot.backup.catalog import Catalog, Entry, human
from bot.backup.diskrun import DiskBackups
from bot.backup.files import Store, StoreError
from bot.backup.jobs import Jobs
from bot.backup.restoring import BootVerify, Restoring
from bot.backup.verify import verify
from bot.commands import Command
from bot.config import Config
from bot.hypervisor.fleet import Fleet, Selection, VmRef
from bot.hypervisor.lifecycle import Done, Progress, Refused
from bot.hypervisor.pool import HostDown, Pool
from bot.policy import Decision, Policy, Request, Target
from bot.reply import Reply, Status
from bot.store.approvals import ApprovalTarget
from bot.store.audit import Actor, Audit, AuditDecision
from bot.store.db import Store as Db
from bot.store.freezes import Freezes
from bot.store.locks import Locked, Locks

if TYPE_CHECKING:
    from bot.approval.workflow import Approving

FRONT_ACTIONS = frozenset({"backups", "verify", "restore", "prune"})
NOT_CONFIGURED = "backups are not configured: set [backups] dir in the config"


class Backups:
    """Given only what it uses, like the approval workflow: config, hosts, policy, tables, the workflow."""

    def __init__(
        self,
        *,
        config: Config,
        pool: Pool,
        fleet: Fleet,
        policy: Policy,
        audit: Audit,
        db: Db,
        freezes: Freezes,
        locks: Locks,
        approving: Approving,
    ) -> None:
        self.config, self.pool, self.fleet, self.policy = config, pool, fleet, policy
        self.audit, self.freezes, self.locks, self.approving = audit, freezes, locks, approving
        self.catalog = Catalog(db)
        self.store = Store(config.backups_dir) if config.backups_dir else None
        if self.store:
            self.store.sweep()  # what a crashed run left behind was never cataloged; it goes
        self.restoring = Restoring(self)
        self.boot = BootVerify(self)
        self.jobs = Jobs(db)
        self.disks = DiskBackups(config, self.catalog, self.jobs)
        self.jobs.recover(lambda host, fn: pool.call(host, fn, 30.0), self.committed)  # a dead bot's job is aborted

    # -- the VM path: `backup VM...` lands here, under the VM's lock --------------------------

    def select_all(self) -> Selection:
        """`backup --all`: every VM on every host that answers; silent hosts are named."""
        inv = self.fleet.inventory()
        return Selection(inv.rows, list(inv.down.values()), globbed=True)

    def run(self, ref: VmRef, cmd: Command, progress: Progress | None = None) -> Done:
        store = self.need_store()
        warnings: list[str] = []
        try:
            if cmd.flag("disk"):
                entry = self.disks.take(ref, store, progress or (lambda _m: None), warnings.append)
            else:
                entry = self.pool.call(
                    ref.host, lambda c: configbackup.take(c, ref.host, ref.uuid, store, self.catalog), timeout=60
                )
            _, removed = retention.plan(self.catalog.entries(uuid=ref.uuid, host=ref.host), self.config.backup_keep)
            kept = []
            for old in removed:
                try:
                    self.delete(old)
                except StoreError as e:  # the backup is made; an old one that cannot go now goes at the next prune
                    kept.append(str(e))
        except OSError as e:
            raise StoreError(f"the backup store failed: {e.strerror or e}") from None
        pruned = f"; retention removed {len(removed) - len(kept)} older" if len(removed) > len(kept) else ""
        pruned += f"; retention could not remove {len(kept)}: {kept[0]}" if kept else ""
        inc = f", incremental on {entry.parent}" if entry.parent else ""
        what = "config backup" if entry.kind == "config" else f"disk backup ({entry.consistency}-consistent{inc})"
        said = "".join(f"; {w}" for w in warnings)
        return Done(f"{what} {entry.id} ({human(entry.size)}, autostart {_onoff(entry.autostart)}){pruned}{said}")

    def before_stop(self, ref: VmRef) -> str:
        """shutdown/destroy during a live backup: the backup is cancelled first, never waited for."""
        if not self.jobs.abort_for(ref.host, ref.uuid):
            return ""
        key = f"{ref.host}/{ref.uuid}"
        for _ in range(100):  # the backup lets go of the VM's lock right after its job ends
            if self.locks.holder(key) is None:
                break
            time.sleep(0.05)
        return "; its live backup was cancelled first (nothing from it is cataloged)"

    def committed(self, set_id: str) -> bool:
        return self.store is not None and (self.store.root / set_id).is_dir()

    def need_store(self) -> Store:
        if self.store is None:
            raise Refused(NOT_CONFIGURED)
        return self.store

    def delete(self, entry: Entry) -> None:
        """Volumes kept in a pool first (a host that fails keeps the whole set), then the catalog row (nothing
        may name a set that is going), then the folder."""
        if inpool.pool_files(entry):
            try:
                self.pool.call(entry.host, lambda c: inpool.remove(c, entry), 60.0)
            except (HostDown, KeyError) as e:
                raise StoreError(f"backup {entry.id}: its host {entry.host} does not answer ({e})") from None
        self.catalog.delete(entry.id)
        with contextlib.suppress(FileNotFoundError):
            self.need_store().remove(entry.id)

    # -- the catalog path ------------------------------------------------------------------------

    def handle(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        name = cmd.action.name
        if self.store is None and name != "backups":
            return self.refuse(cmd, actor, cid, NOT_CONFIGURED)
        if name == "backups":
            return self.listing(cmd, actor, cid)
        if name == "verify":
            return self.verify(cmd, actor, cid)
        if name == "restore":
            return self.restoring.handle(cmd, actor, cid)
        return self.prune(cmd, actor, cid)

    def execute(self, cmd: Command, actor: Actor, cid: str, decision: Decision) -> Reply:
        """An approved restore or prune, re-checked and run now."""
        if cmd.action.name == "restore":
            return self.restoring.execute(cmd, actor, cid, decision)
        return self.prune_now(cmd, actor, cid, decision)

    def match(self, pattern: str | None, backup_id: str | None = None) -> list[Entry]:
        """Backups of ``name``, ``host/name`` or a UUID (the VM may be gone), or one by id; newest first."""
        if backup_id is not None:
            found = self.catalog.get(backup_id)
            return [found] if found else []
        if pattern is None:
            return self.catalog.entries()
        head, sep, rest = pattern.partition("/")
        host, vm = (head, rest) if sep and head in self.pool.names else (None, pattern)
        return [e for e in self.catalog.entries(host=host) if vm in (e.vm_name, e.vm_uuid)]

    def allowed(self, actor: Actor, action: str, entries: list[Entry]) -> tuple[list[Entry], str]:
        """The entries whose VM the requester's grant covers for ``action``, and the first refusal."""
        keep, why = [], ""
        verdicts: dict[tuple[str, str, str], Decision] = {}
        for e in entries:
            key = (e.host, e.vm_name, e.vm_uuid)
            if key not in verdicts:
                verdicts[key] = self.policy.decide(Request(actor.user, actor.channel, action, False, (Target(*key),)))
            if verdicts[key].allowed:
                keep.append(e)
            else:
                why = why or verdicts[key].reason
        return keep, why

    def listing(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        pattern = cmd.targets[0] if cmd.targets else None
        found = self.match(pattern)
        if not found and pattern is None:
            self.audit.record(actor, cid, cmd.text, "backups", AuditDecision.ALLOWED, "ok", "no backups")
            return Reply(Status.OK, "no backups yet" if self.store else NOT_CONFIGURED)
        shown, why = self.allowed(actor, "backups", found)
        if not shown:
            line = f"refused: {why}" if why else f"no backups of {pattern!r} in the catalog"
            return self.refuse(cmd, actor, cid, line, Status.REFUSED if why else Status.OK)
        hidden = f" ({len(found) - len(shown)} more you may not see)" if len(shown) < len(found) else ""
        self.audit.record(actor, cid, cmd.text, "backups", AuditDecision.ALLOWED, "ok", f"{len(shown)} backup(s)")
        return Reply(Status.OK, f"{len(shown)} backup(s), newest first{hidden}", [e.line() for e in shown])

    def verify(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        if cmd.flag("boot"):
            return self.boot.handle(cmd, actor, cid)
        want = cmd.flag("from")
        found = self.match(cmd.targets[0] if cmd.targets else None, want if isinstance(want, str) else None)
        if not found:
            return self.refuse(cmd, actor, cid, "no backup matches; see /vm backups", Status.REFUSED)
        entries, why = self.allowed(actor, "verify", found)
        if len(entries) < len(found):
            return self.refuse(cmd, actor, cid, f"refused: {why}")
        lines, bad, unchecked = [], 0, 0
        for e in entries:
            row = self.audit.begin(actor, cid, cmd.text, "verify", AuditDecision.ALLOWED, **_fields(e))
            verdict = verify(self.need_store(), self.catalog, e, self.config.hosts)
            bad += bool(verdict.failures)
            unchecked += not verdict.ok and not verdict.failures
            self.audit.finish(row, "ok" if verdict.ok else "failed", verdict.line()[:500])
            lines.append(verdict.line())
        said = [f"{bad} BAD, marked bad"] if bad else []
        said += [f"{unchecked} could not be read now (not marked)"] if unchecked else []
        head = f"verified {len(entries)} backup(s): " + ("; ".join(said) or "all good")
        return Reply(Status.FAILED if bad or unchecked else Status.OK, head, lines)

    def prune(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        _, removed = retention.plan(self.catalog.entries(), self.config.backup_keep)
        if not removed:
            self.audit.record(actor, cid, cmd.text, "prune", AuditDecision.ALLOWED, "ok", "nothing to prune")
            return Reply(Status.OK, "nothing to prune: every backup is kept by the retention rules")
        decision = self.policy.decide(self.prune_request(actor, removed))
        if not decision.allowed:
            return self.refuse(cmd, actor, cid, f"refused: {decision.reason}")
        lines = [f"remove {e.line()}" for e in removed]
        if cmd.flag("dry-run"):
            self.audit.record(
                actor, cid, cmd.text, "prune", AuditDecision.DRY_RUN, "ok", f"would remove {len(removed)}"
            )
            wait = [f"would wait for {decision.approvals} approval(s)"] if decision.needs_approval else []
            return Reply(Status.OK, f"dry run: prune would remove {len(removed)} backup(s)", lines + wait)
        if frozen := self.frozen({e.host for e in removed}):
            return self.refuse(cmd, actor, cid, frozen)
        if decision.needs_approval:
            return self.ask(
                cmd, actor, cid, decision, [(e, f"remove backup {e.id} of {e.host}/{e.vm_name}") for e in removed]
            )
        return self.prune_now(cmd, actor, cid, decision)

    def prune_request(self, actor: Actor, removed: list[Entry]) -> Request:
        targets = tuple(dict.fromkeys(Target(e.host, e.vm_name, e.vm_uuid) for e in removed))
        return Request(actor.user, actor.channel, "prune", True, targets)

    def prune_now(self, cmd: Command, actor: Actor, cid: str, decision: Decision) -> Reply:
        """Re-plan (the catalog may have changed while the request waited), then remove under each VM's lock."""
        _, removed = retention.plan(self.catalog.entries(), self.config.backup_keep)
        lines, done = [], 0
        for e in removed:
            row = self.audit.begin(
                actor, cid, cmd.text, "prune", AuditDecision.ALLOWED, reason=decision.reason, **_fields(e)
            )
            try:
                if frozen := self.freezes.blocking(e.host):
                    raise Refused(frozen.line())
                with self.locks.hold(e.host, e.vm_uuid, e.vm_name, "prune", actor.user):
                    self.delete(e)
            except (Refused, Locked, OSError, StoreError) as err:
                self.audit.finish(row, Status.REFUSED.value, str(err))
                lines.append(f"kept {e.id}: {err}")
                continue
            self.audit.finish(row, "ok", f"removed backup {e.id}")
            lines.append(f"removed {e.line()}")
            done += 1
        status = Status.OK if done == len(removed) else Status.FAILED
        return Reply(status, f"prune: removed {done} of {len(removed)} backup(s)", lines, changed=bool(done))

    # -- shared ----------------------------------------------------------------------------------

    def frozen(self, hosts: set[str]) -> str | None:
        for host in sorted(hosts):
            if found := self.freezes.blocking(host):
                return found.line()
        return None

    def ask(self, cmd: Command, actor: Actor, cid: str, decision: Decision, what: list[tuple[Entry, str]]) -> Reply:
        """A pending approval bound to the catalog's host + UUID of each VM concerned."""
        targets = []
        for e, line in what:
            row = self.approving.waiting_row(cmd, actor, cid, decision, **_fields(e))
            targets.append(ApprovalTarget(e.host, e.vm_uuid, e.vm_name, "backup", preview=line, audit_id=row))
        return self.approving.request_targets(cmd, actor, targets, decision)

    def refuse(self, cmd: Command, actor: Actor, cid: str, line: str, status: Status = Status.REFUSED) -> Reply:
        decision = AuditDecision.ALLOWED if status is Status.OK else AuditDecision.REFUSED
        self.audit.record(actor, cid, cmd.text, cmd.action.name, decision, status.value, line)
        return Reply(status, line)

    @contextlib.contextmanager
    def locked(self, host: str, pairs: list[tuple[str, str]], action: str, user: str) -> Iterator[None]:
        """Hold the lock of every (uuid, name) at once, or none."""
        with contextlib.ExitStack() as stack:
            for uuid, name in pairs:
                stack.enter_context(self.locks.hold(host, uuid, name, action, user))
            yield


def rebuild(config: Config) -> tuple[Path, int, int, int, list[str]]:
    """`vmbot backups reindex`: (store, sets cataloged, stale rows dropped, unfinished sets removed, problems)."""
    if config.backups_dir is None:
        raise StoreError(NOT_CONFIGURED)
    audit = Audit(config.store_path)
    db = Db(audit)
    try:
        store = Store(config.backups_dir)
        swept = store.sweep()
        sets, dropped, problems = Catalog(db).reindex(store)
    finally:
        db.close()
        audit.close()
    return store.root, sets, dropped, len(swept), problems


def backup_jobs(config: Config) -> dict[str, str]:
    """The scheduled backups as the commands they run: the config of every VM, the disks of the listed ones."""
    out = {"config_backup": "backup --all --yes"}
    if config.schedule.disk_backup_vms:
        out["disk_backup"] = shlex.join(["backup", *config.schedule.disk_backup_vms, "--disk", "--yes"])
    return out


def _fields(e: Entry) -> dict[str, str]:
    return {"host": e.host, "vm_uuid": e.vm_uuid, "vm_name": e.vm_name}


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"
