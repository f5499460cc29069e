"""`/vm restore VM [--from ID] [--as NEW]`: choose the backup, ask the policy about both names, then run.

The policy is asked about the backed-up VM *and* the new name on the
destination host (for the requester now, for the approver later); a freeze on
that host refuses it; the restore runs under the lock of both UUIDs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import libvirt

from bot.backup import bootcheck, inpool, restore
from bot.backup.catalog import Catalog, Entry
from bot.backup.chain import rebuilt
from bot.backup.configbackup import iso_now
from bot.backup.files import Store, StoreError
from bot.backup.verify import verify
from bot.commands import Command
from bot.config import Config
from bot.hypervisor import links, xmlcheck
from bot.hypervisor.errors import error_text
from bot.hypervisor.pool import HostDown, Pool
from bot.policy import Decision, Policy, Request, Target
from bot.reply import Reply, Status
from bot.store.audit import Actor, Audit, AuditDecision
from bot.store.locks import Locked


class Front(Protocol):
    """What restore uses of ``bot.backup.front.Backups`` (named here so the two modules form no circle)."""

    config: Config
    pool: Pool
    policy: Policy
    audit: Audit
    catalog: Catalog

    def match(self, pattern: str | None, backup_id: str | None = None) -> list[Entry]: ...
    def need_store(self) -> Store: ...
    def frozen(self, hosts: set[str]) -> str | None: ...
    def refuse(self, cmd: Command, actor: Actor, cid: str, line: str, status: Status = ...) -> Reply: ...
    def ask(self, cmd: Command, actor: Actor, cid: str, decision: Decision, what: list[tuple[Entry, str]]) -> Reply: ...
    def locked(self, host: str, pairs: list[tuple[str, str]], action: str, user: str) -> AbstractContextManager: ...


LONG_CALL = 120.0  # creating volumes on a real host can take longer than the pool's per-call timeout


class Restoring:
    def __init__(self, backups: Front) -> None:
        self.backups = backups

    def choose(self, cmd: Command) -> Entry | str:
        """The backup to restore: --from ID (which must be of this VM), else the newest good one."""
        pattern, want = cmd.targets[0], cmd.flag("from")
        of_vm = self.backups.match(pattern)
        if isinstance(want, str):
            entry = self.bot_entry(want)
            if entry is None:
                return f"no backup with id {want!r}; see /vm backups"
            if entry.id not in {e.id for e in of_vm}:
                return f"backup {entry.id} is of {entry.host}/{entry.vm_name}, not {pattern!r}"
            return entry if entry.good else f"backup {entry.id} is marked bad (failed verify); pick another"
        hosts = {e.host for e in of_vm}
        if len(hosts) > 1:
            return f"{pattern!r} has backups from {', '.join(sorted(hosts))}; name one as host/name"
        good = [e for e in of_vm if e.good]
        if not good:
            return f"no good backup of {pattern!r} in the catalog" + (" (only bad ones)" if of_vm else "")
        return good[0]

    def bot_entry(self, backup_id: str) -> Entry | None:
        return self.backups.catalog.get(backup_id)

    def request(self, actor: Actor, entry: Entry, new: str | None, new_uuid: str = "") -> Request:
        targets = [Target(entry.host, entry.vm_name, entry.vm_uuid)]
        if new is not None:
            targets.append(Target(entry.host, new, new_uuid))
        return Request(actor.user, actor.channel, "restore", True, tuple(targets))

    def prepare(
        self, entry: Entry, new: str | None, data: restore.DiskData | None = None
    ) -> tuple[restore.Plan, xmlcheck.Rules]:
        """Plan on the destination host and check the XML against the allowlist; nothing changes."""
        if entry.host not in self.backups.pool.names:
            raise restore.RestoreRefused(f"backup {entry.id} is of host {entry.host}, which is not configured")
        store, pools = self.backups.need_store(), self.backups.config.backup_pools

        def on_host(conn: libvirt.virConnect) -> tuple[restore.Plan, xmlcheck.Rules]:
            plan = restore.plan(conn, store, entry, new, data)
            rules = xmlcheck.host_rules(conn, pools)
            xmlcheck.check(ET.tostring(plan.xml, encoding="unicode"), rules)
            return plan, rules

        return self.backups.pool.call(entry.host, on_host, LONG_CALL)

    def define(self, host: str, plan: restore.Plan, rules: xmlcheck.Rules) -> str:
        """Uploading disk data takes long: on its own connection, not holding the pool's worker for the host."""
        run = lambda c: restore.execute(c, plan, rules)  # noqa: E731
        if any(v.data for v in plan.volumes):
            return _own(self.backups.config.hosts[host], run)
        return self.backups.pool.call(host, run, LONG_CALL)

    def check_fleet(self, plan: restore.Plan, entry: Entry) -> None:
        """The UUID the restore defines is nowhere else in the fleet: a new one on no host, the VM's own on
        no host but its home."""
        answers = self.backups.pool.fan_out(lambda _h, c: restore.uuid_used(c, plan.uuid))
        if plan.as_new:
            restore.check_uuid_unused(answers, plan.uuid)
        else:
            restore.check_not_elsewhere(answers, plan.uuid, entry.host)

    def handle(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        chosen = self.choose(cmd)
        if isinstance(chosen, str):
            return self.backups.refuse(cmd, actor, cid, chosen)
        new = cmd.flag("as")
        new = new if isinstance(new, str) else None
        decision = self.backups.policy.decide(self.request(actor, chosen, new))
        if not decision.allowed:
            return self.backups.refuse(cmd, actor, cid, f"refused: {decision.reason}")
        if (frozen := self.backups.frozen({chosen.host})) and not cmd.flag("dry-run"):
            return self.backups.refuse(cmd, actor, cid, frozen)
        try:
            with disk_data(self.backups, chosen, whole=False) as data:  # kept in a pool: only each disk's header
                plan, _ = self.prepare(chosen, new, data)
            self.check_fleet(plan, chosen)
        except (restore.RestoreRefused, xmlcheck.UnsafeXML) as e:
            return self.backups.refuse(cmd, actor, cid, f"restore refused: {e}")
        except (HostDown, libvirt.libvirtError, StoreError, OSError) as e:
            return self.backups.refuse(cmd, actor, cid, f"restore failed: {_message(e)}", Status.FAILED)
        if cmd.flag("dry-run"):
            self.backups.audit.record(actor, cid, cmd.text, "restore", AuditDecision.DRY_RUN, "ok", decision.reason)
            wait = f"would wait for {decision.approvals} approval(s)" if decision.needs_approval else "runs at once"
            extra = [f"would be refused: {frozen}"] if frozen else []
            lines = [plan.preview(), *plan.notes, wait, *extra]
            return Reply(Status.OK, f"dry run: nothing was changed ({decision.reason})", lines)
        if decision.needs_approval:
            return self.backups.ask(cmd, actor, cid, decision, [(chosen, plan.preview())])
        return self.execute(cmd, actor, cid, decision)

    def execute(self, cmd: Command, actor: Actor, cid: str, decision: Decision) -> Reply:
        """Choose and plan again (state now, not when asked), check the new UUID on every host, define."""
        chosen = self.choose(cmd)
        if isinstance(chosen, str):
            return self.backups.refuse(cmd, actor, cid, chosen)
        new = cmd.flag("as") if isinstance(cmd.flag("as"), str) else None
        row = self.backups.audit.begin(
            actor, cid, cmd.text, "restore", AuditDecision.ALLOWED, reason=decision.reason,
            host=chosen.host, vm_uuid=chosen.vm_uuid, vm_name=str(new or chosen.vm_name),
        )  # fmt: skip
        try:
            if frozen := self.backups.frozen({chosen.host}):
                raise restore.RestoreRefused(frozen)
            with disk_data(self.backups, chosen) as data:  # increments: the chain; kept in a pool: fetched, checked
                plan, rules = self.prepare(chosen, str(new) if new else None, data)
                self.check_fleet(plan, chosen)
                pairs = [(chosen.vm_uuid, chosen.vm_name)] + ([(plan.uuid, plan.name)] if plan.as_new else [])
                with self.backups.locked(chosen.host, pairs, "restore", actor.user):
                    said = self.define(chosen.host, plan, rules)
        except (restore.RestoreRefused, xmlcheck.UnsafeXML, Locked) as e:
            self.backups.audit.finish(row, Status.REFUSED.value, str(e))
            return Reply(Status.REFUSED, f"restore refused: {e}")
        except (HostDown, libvirt.libvirtError, StoreError, OSError) as e:
            self.backups.audit.finish(row, "failed", _message(e))
            return Reply(Status.FAILED, f"restore failed: {_message(e)}; nothing was defined")
        self.backups.audit.finish(row, "ok", said)
        return Reply(Status.OK, f"{chosen.host}/{plan.name}: {said}", plan.notes, changed=True)


@contextmanager
def disk_data(backups: Front, entry: Entry, whole: bool = True) -> Iterator[restore.DiskData | None]:
    """What restore puts in the disks when not the set's own files in the store: an increment's chain
    rebuilt, or the copies kept in the host's pool fetched through libvirt (bot.backup.inpool)."""
    store = backups.need_store()
    if inpool.pool_files(entry):
        uri = backups.config.hosts.get(entry.host)
        if uri is None:
            raise restore.RestoreRefused(f"backup {entry.id} is of host {entry.host}, which is not configured")
        with inpool.fetched(store, entry, uri, whole) as data:
            yield data
        return
    with rebuilt(store, backups.catalog, entry) as data:
        yield data


def _own(uri: str, fn: Callable[[libvirt.virConnect], str]) -> str:
    conn = links.own(uri)
    try:
        return fn(conn)
    finally:
        conn.close()


def _message(e: Exception) -> str:
    return error_text(e) or e.__class__.__name__


class BootVerify:
    """`verify [VM] [--from ID] --boot`: the hashes first, then a scratch copy boots on the backup's host."""

    def __init__(self, backups: Front) -> None:
        self.backups = backups

    def handle(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        want = cmd.flag("from")
        if not cmd.targets and not isinstance(want, str):
            return self.backups.refuse(cmd, actor, cid, "verify --boot needs a VM or --from ID", Status.USAGE)
        found = self.backups.match(cmd.targets[0] if cmd.targets else None, want if isinstance(want, str) else None)
        disks = [e for e in found if e.good and any(f.get("role") == "disk" for f in e.files)]
        if not disks:
            return self.backups.refuse(cmd, actor, cid, "no good disk backup matches; --boot needs one")
        entry = disks[0]
        decision = self.backups.policy.decide(
            Request(actor.user, actor.channel, "verify", False, (Target(entry.host, entry.vm_name, entry.vm_uuid),))
        )
        if not decision.allowed:
            return self.backups.refuse(cmd, actor, cid, f"refused: {decision.reason}")
        if frozen := self.backups.frozen({entry.host}):
            return self.backups.refuse(cmd, actor, cid, frozen)  # it defines and boots a VM there
        row = self.backups.audit.begin(
            actor,
            cid,
            cmd.text,
            "verify",
            AuditDecision.ALLOWED,
            host=entry.host,
            vm_uuid=entry.vm_uuid,
            vm_name=entry.vm_name,
        )
        verdict = verify(self.backups.need_store(), self.backups.catalog, entry, self.backups.config.hosts)
        if not verdict.ok:
            self.backups.audit.finish(row, "failed", verdict.line()[:500])
            return Reply(Status.FAILED, verdict.line())
        status, line = self._boot(entry)
        self.backups.catalog.mark(entry.id, entry.status, iso_now(), f"ok; boot: {line}"[:500])
        self.backups.audit.finish(row, status.value, line)
        return Reply(status, f"{entry.id} ({entry.host}/{entry.vm_name}): {line}")

    def _boot(self, entry: Entry) -> tuple[Status, str]:
        """On its own connection: a boot takes longer than the pool's per-call deadline."""
        try:
            conn = links.own(self.backups.config.hosts[entry.host])
        except (KeyError, libvirt.libvirtError) as e:
            return (
                Status.FAILED,
                f"cannot reach {entry.host}: {_message(e) if isinstance(e, libvirt.libvirtError) else e}",
            )
        try:
            rules = xmlcheck.host_rules(conn, self.backups.config.backup_pools)
            with disk_data(self.backups, entry) as data:
                return Status.OK, bootcheck.boot(conn, self.backups.need_store(), entry, rules, data)
        except (restore.RestoreRefused, xmlcheck.UnsafeXML) as e:
            return Status.REFUSED, f"not booted: {e}"
        except bootcheck.BootFailed as e:
            return Status.FAILED, f"did NOT boot: {e}"
        except (libvirt.libvirtError, StoreError, OSError) as e:
            return Status.FAILED, f"boot check failed: {_message(e)}"
        finally:
            conn.close()
