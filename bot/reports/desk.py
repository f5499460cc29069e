"""Reports, the schedule and migration checks on the command path, and the scheduled jobs that post them.

Scheduled work runs as the named identity ``vmbot:scheduler``: the policy must
grant it the job's action explicitly (nothing is allowed by default), jobs
that change state stop during a freeze, and every run is an audit row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot import times
from bot.commands import Command
from bot.config import Config
from bot.hypervisor.events import StateLog
from bot.hypervisor.fleet import Fleet, VmRef, no_host
from bot.hypervisor.inventory import FIRST_WAIT, KeptInventory
from bot.policy import Policy, Request, Target
from bot.reply import Reply, Status
from bot.reports import autostart, backups, migrate, status
from bot.reports.alerts import BY_BOT, Alerts, Incidents, Sink
from bot.reports.backups import BackupCatalog
from bot.reports.facts import Facts, gather
from bot.reports.model import AMBER, INFO, RED, Item, Report
from bot.reports.scope import Scope, for_user
from bot.schedule.engine import Job, Outcome, Scheduler
from bot.schedule.runs import RunTable
from bot.schedule.settings import JOBS
from bot.store.approvals import Approvals
from bot.store.audit import Actor, Audit, AuditDecision
from bot.store.db import Store
from bot.store.freezes import FLEET, Freezes
from bot.store.locks import Locks

SYSTEM = Actor(user="vmbot:scheduler", source="schedule")
DESK_ACTIONS = frozenset({"report", "schedule", "migrate-check"})
REPORT_JOBS = {"digest": "status", "autostart_report": "autostart", "backup_report": "backups"}
Publish = Callable[[str, Report], None]  # (channel, report); raises when it could not be posted


class Desk:
    def __init__(
        self, config: Config, fleet: Fleet, policy: Policy, audit: Audit, store: Store, events: StateLog,
        approvals: Approvals, freezes: Freezes, locks: Locks, catalog: BackupCatalog | None = None,
        kept: KeptInventory | None = None,
    ) -> None:  # fmt: skip
        self.config, self.fleet, self.policy, self.audit = config, fleet, policy, audit
        self.events, self.approvals, self.freezes, self.locks = events, approvals, freezes, locks
        self.catalog, self.kept = catalog, kept  # kept: the inventory the bot keeps, the reports' VMs
        self.store, self.incidents = store, Incidents(store)
        self.runs = RunTable(store, config.schedule.jobs)
        self.latest: tuple[Facts, Report] | None = None  # the last digest: App Home shows it
        self.publish: Publish | None = None  # set by the adapter that can post (vmbot run)
        self.backup_jobs: dict[str, Callable[[str], Outcome]] = {}  # set by the Bot when backups are configured

    # -- reports -----------------------------------------------------------------------

    def extra(self, facts: Facts, scope: Scope) -> list[Item]:
        """What the bot knows beyond libvirt: approvals, freezes, incidents, autostart and backup health."""
        out = [Item(INFO, f.line(), "" if f.scope == FLEET else f.scope) for f in self.freezes.active()]
        for req in self.approvals.pending():
            what = f"approval {req.id}: {req.action} by {req.requester} waits (expires {times.hhmm(req.expires_at)})"
            t = req.targets[0] if req.targets else None
            out.append(Item(AMBER, what, *((t.host, t.name, t.uuid) if t else ("", "", ""))))
        out += self.incidents.items(datetime.now(UTC) - timedelta(days=1))
        returned = self.incidents.returned_hosts()
        out += autostart.items(facts, scope, self.config.autostart_expect, returned, self.catalog)
        if self.catalog is None:
            out.append(Item(INFO, "no backup catalog: backup health is not known"))
        else:
            out += backups.items(self.catalog, facts, self.config.schedule, scope, facts.at)
        return out

    def report(self, kind: str, scope: Scope, facts: Facts | None = None) -> tuple[Facts, Report]:
        facts = facts or self.facts()
        if kind == "autostart":
            returned = self.incidents.returned_hosts()
            expect = self.config.autostart_expect
            return facts, autostart.report(facts, scope, facts.at, expect, returned, self.catalog)
        if kind == "backups":
            return facts, backups.report(self.catalog, facts, self.config.schedule, scope, facts.at)
        rep = status.build(facts, scope, self.events.changed_at(), self.extra(facts, scope))
        return facts, rep

    def facts(self) -> Facts:
        """The VMs from the kept inventory when someone keeps it; else every host is asked, and the report says why."""
        snap = self.kept.snapshot(wait=FIRST_WAIT) if self.kept is not None else None
        why = "" if snap is not None or self.kept is None else self.kept.fresh()[1]
        facts = gather(self.fleet, kept=snap, why=why)
        if self.config.demo:  # the demo fleet lives in one process: where its answers come from is no news
            facts.source = ""
        return facts

    def viewer(self, user: str) -> Scope:
        """Whose eyes App Home is for: the user's grants for ``report``, as in ``/vm report``."""
        return for_user(self.policy, user, "")

    def home(self, user: str) -> Report | None:
        """The latest digest cut to what ``user`` may see (App Home), without asking libvirt again."""
        if self.latest is None:
            return None
        facts, _ = self.latest
        return self.report("status", for_user(self.policy, user, ""), facts)[1]

    # -- commands ------------------------------------------------------------------------

    def handle(self, cmd: Command, actor: Actor, cid: str) -> Reply:
        name = cmd.action.name
        if name == "migrate-check":
            reply = self.migrate_check(cmd, actor)
        else:
            decision = self.policy.decide(Request(actor.user, actor.channel, name, False))
            if not decision.allowed:
                reply = Reply(Status.REFUSED, f"refused: {decision.reason}")
            elif name == "schedule":
                reply = self.schedule_reply()
            else:
                _, rep = self.report(cmd.targets[0], for_user(self.policy, actor.user, actor.channel))
                reply = Reply(Status.OK, rep.headline(), report=rep)
        decided = AuditDecision.REFUSED if reply.status is Status.REFUSED else AuditDecision.ALLOWED
        self.audit.record(actor, cid, cmd.text, name, decided, reply.status.value, reply.headline)
        return reply

    def schedule_reply(self) -> Reply:
        sched = self.scheduler(lambda: False)
        lines = []
        for s in sched.status():
            last = s.last
            if last is None or not last.result:
                ran = "never ran"
            else:
                ran = f"last {last.result} {times.minute(last.ended)} ({last.duration:.1f}s)"
                ran += f": {last.detail}" if last.detail else ""
            nxt = (
                f"next {s.next_fire.astimezone(sched.schedule.tz):%Y-%m-%d %H:%M %Z}" if s.next_fire else "no next run"
            )
            lines.append(f"{s.name} `{s.cron}` {s.timezone}: {nxt}; {ran}" + (" (running now)" if s.running else ""))
        for name, why in self.unavailable().items():
            lines.append(f"{name} `{self.config.schedule.jobs[name]}`: not scheduled: {why}")
        head = f"{len(lines)} scheduled job(s) in {self.config.schedule.timezone}" if lines else "no jobs in [schedule]"
        return Reply(Status.OK, head, lines)

    def migrate_check(self, cmd: Command, actor: Actor) -> Reply:
        vm_text, target = cmd.targets
        granted = self.policy.decide(Request(actor.user, actor.channel, "migrate-check", False))
        if not granted.allowed:  # before any name is looked up: no grant, no host or VM names
            return Reply(Status.REFUSED, f"refused: {granted.reason}")
        scope = for_user(self.policy, actor.user, actor.channel, "migrate-check")
        if target not in self.fleet.pool.names:
            seen = [h for h in self.fleet.pool.names if scope.host(h)]  # only hosts the asker may see
            return Reply(Status.USAGE, no_host(target, seen) if seen else f"no host named '{target}'")
        sel = self.fleet.resolve([vm_text])
        if sel.problems or len(sel.rows) != 1:
            return Reply(
                Status.REFUSED, "; ".join(sel.problems) or f"'{vm_text}' matches {len(sel.rows)} VMs; name one"
            )
        row = sel.rows[0]
        ref = row.ref
        decision = self.policy.decide(
            Request(actor.user, actor.channel, "migrate-check", False, (Target(ref.host, ref.name, ref.uuid),))
        )
        if not decision.allowed:
            return Reply(Status.REFUSED, f"refused: {decision.reason}")
        if target == ref.host:
            return Reply(Status.USAGE, f"{ref} is already on {target}")
        see_target = scope.host(target)
        checks, _vm = migrate.run(self.fleet.pool, ref, target, see_target)
        if len(checks) > 1:
            checks += self.bot_checks(ref, target, row.state.name, actor, see_target)
        rep = Report("migrate-check", f"migrate-check {ref} → {target}", datetime.now(UTC), attention=checks)
        fails = sum(1 for c in checks if c.level == RED)
        warns = sum(1 for c in checks if c.level == AMBER)
        verdict = "ready" if not fails else "not ready"
        head = f"{ref} → {target}: {verdict} ({fails} fail, {warns} warn, {len(checks) - fails - warns} pass)"
        rep.title = head
        return Reply(Status.OK, head, report=rep)

    def bot_checks(self, ref: VmRef, target: str, state: str, actor: Actor, see_target: bool = True) -> list[Item]:
        """State, lock, freezes on both hosts and the requester's grants on the target.

        A freeze of a target the requester may not see is named, not explained (who, why).
        """
        line, live = migrate.line, state in ("running", "paused")
        out = [
            line(migrate.PASS if live else migrate.WARN, "VM state", state + ("" if live else ": only an offline move"))
        ]
        holder = self.locks.holder(f"{ref.host}/{ref.uuid}")
        out.append(line(migrate.FAIL, "lock", holder.line(str(ref))) if holder else line(migrate.PASS, "lock", "free"))
        for host in (ref.host, target):
            frozen = self.freezes.blocking(host)
            why = (frozen.line() if see_target or host == ref.host else "frozen (read-only)") if frozen else ""
            out.append(
                line(migrate.FAIL, f"freeze on {host}", why)
                if frozen
                else line(migrate.PASS, f"freeze on {host}", "none")
            )
        grant = self.policy.decide(
            Request(actor.user, actor.channel, "start", True, (Target(target, ref.name, ref.uuid),))
        )
        level = migrate.PASS if grant.allowed else migrate.FAIL
        out.append(line(level, "your grants on the target", f"start of {ref.name} on {target}: {grant.reason}"))
        return out

    # -- alerts ----------------------------------------------------------------------------

    def alerts(self, sink: Sink | None, active: Callable[[], bool] = lambda: True) -> Alerts:
        """Alerts from the lifecycle events the pool already listens to (``vmbot run`` starts this)."""
        return Alerts(self.fleet.pool, self.incidents, self.acted_recently, self.name_of, sink, active)

    def acted_recently(self, host: str, uuid: str) -> bool:
        """Did someone ask for this through the bot (lock held, or an allowed stop in the last 10 min)?"""
        if self.locks.holder(f"{host}/{uuid}"):
            return True
        since = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
        marks = ",".join("?" * len(BY_BOT))
        rows = self.store.all(
            f"SELECT 1 FROM operations WHERE host = ? AND vm_uuid = ? AND decision = ?"
            f" AND action IN ({marks}) AND started_at >= ? LIMIT 1",
            [host, uuid, AuditDecision.ALLOWED, *sorted(BY_BOT), since],
        )
        return bool(rows)

    def name_of(self, host: str, uuid: str) -> str:
        try:
            return self.fleet.pool.call(host, lambda c: c.lookupByUUIDString(uuid).name())
        except Exception:
            return uuid

    # -- scheduled jobs ------------------------------------------------------------------

    def unavailable(self) -> dict[str, str]:
        """Configured jobs this bot cannot run (backup jobs without a [backups] dir)."""
        runnable = set(REPORT_JOBS) | set(self.backup_jobs)
        why = "backups are not configured: set [backups] dir"
        return {n: why for n in self.config.schedule.jobs if n not in runnable}

    def jobs(self) -> list[Job]:
        bodies = {n: self.as_system(n) for n in REPORT_JOBS} | self.backup_jobs
        return [Job(n, c, bodies[n], JOBS[n]) for n, c in self.config.schedule.jobs.items() if n in bodies]

    def scheduler(self, leader: Callable[[], bool], **kw: object) -> Scheduler:
        return Scheduler(self.config.schedule, self.runs, self.jobs(), leader, **kw)  # type: ignore[arg-type]

    def system_scope(self, channel: str) -> Scope:
        """What the scheduled reports may show: vmbot:scheduler's grants, like any reader's (fail closed).

        A grant scoped to ``hosts: [lab*]`` keeps prod out of a digest posted to the lab's channel.
        A grant without host or VM scope covers the whole fleet, which is what the digest channel
        usually gets.
        """
        return for_user(self.policy, SYSTEM.user, channel)

    def as_system(self, job: str) -> Callable[[str], Outcome]:
        """The job's body under the system identity: policy first, audited, posting to the digest channel."""
        channel = self.config.slack.get("digest_channel", "")

        def run(note: str) -> Outcome:
            actor = Actor(SYSTEM.user, channel, source=SYSTEM.source)
            text = f"(schedule) {job}" + (f" [{note}]" if note else "")
            decision = self.policy.decide(Request(actor.user, channel, "report", False))
            if not decision.allowed:
                self.audit.record(
                    actor, job, text, "report", AuditDecision.REFUSED, Status.REFUSED.value, decision.reason
                )
                return Outcome("refused", decision.reason)
            row = self.audit.begin(actor, job, text, "report", AuditDecision.ALLOWED, reason=decision.reason)
            try:
                facts, rep = self.report(REPORT_JOBS[job], self.system_scope(channel))
            except Exception as e:  # the row must not stay "running"; the scheduler records the failure
                self.audit.finish(row, "failed", f"report not built: {type(e).__name__}")
                raise
            if job == "digest":
                self.latest = (facts, rep)
            if self.publish is None:
                self.audit.finish(row, "failed", "nothing can post here")
                return Outcome("failed", "nothing can post here (no Slack client)")
            try:
                self.publish(channel, rep)
            except Exception as e:
                self.audit.finish(row, "failed", f"not posted: {type(e).__name__}")
                return Outcome("failed", f"not posted: {e}")
            self.audit.finish(row, "ok", rep.headline())
            return Outcome("ok", rep.headline())

        return run
