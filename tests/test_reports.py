"""The status digest, autostart and backup health on synthetic test-driver fleets with anomalies planted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.reply import Status
from bot.reports import autostart, backups
from bot.reports.facts import gather
from bot.reports.model import AMBER, GREEN, INFO, RED
from bot.reports.scope import WHOLE_FLEET, for_user
from bot.schedule.settings import Schedule
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm
from tests.fakehosts import closed_port
from tests.policyrig import make_policy
from tests.reportrig import bot_on, plant_event, write_host

U_PAUSED_OLD = "22222222-0000-4000-8000-000000000001"
U_PAUSED_NEW = "22222222-0000-4000-8000-000000000002"
POLICY = """\
roles:
  viewer: [list, state, info, hosts, audit, report, schedule, migrate-check]
  operator: [viewer, start, shutdown, destroy]
grants:
  - who: [UADMIN, UREQ]
    role: operator
  - who: [UWEB]
    role: viewer
    hosts: [kvm01]
    vms: ["web-*"]
  - who: [vmbot:scheduler]
    role: viewer
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Bot]:
    one = [
        Vm("web-01"),
        Vm("web-02", "shut off"),
        Vm("web-crash"),
        Vm("db-paused-old", "paused", uuid=U_PAUSED_OLD),
        Vm("db-paused-new", "paused", uuid=U_PAUSED_NEW),
        Vm("<!channel> x", "shut off"),
    ]
    two = [Vm("app-01"), Vm("app-02", "shut off")]
    hosts = {
        "kvm01": write_host(tmp_path / "kvm01.xml", one, {"web-crash"}, pool_path="/p1"),
        "kvm02": write_host(tmp_path / "kvm02.xml", two, pool_path="/p2"),
        "kvm09": f"qemu+tcp://127.0.0.1:{closed_port()}/system",  # refuses: a host that does not answer
    }
    bot = bot_on(hosts, str(tmp_path / "vmbot.db"), make_policy(tmp_path, POLICY), host_timeout=3.0)
    now = datetime.now(UTC)
    plant_event(bot, "kvm01", U_PAUSED_OLD, "paused", now - timedelta(days=3))
    plant_event(bot, "kvm01", U_PAUSED_NEW, "paused", now - timedelta(hours=2))
    bot.pool.call("kvm02", lambda c: c.lookupByName("app-02").setAutostart(1))
    yield bot
    bot.close()


def texts(items: list) -> list[str]:
    return [f"{i.level} {i.text}" for i in items]


def test_the_digest_puts_each_planted_anomaly_first_worst_first(fleet: Bot) -> None:
    fleet.handle("destroy kvm01/web-01 --reason test", Actor("UREQ", "C0OPS", source="slack"))  # waits for approval
    fleet.handle("freeze kvm02", Actor("UADMIN", "C0OPS", source="slack"))
    _, rep = fleet.desk.report("status", WHOLE_FLEET)
    lines = texts(rep.attention)
    levels = [i.level for i in rep.attention]
    assert levels == sorted(levels, key=[RED, AMBER, INFO, GREEN].index)  # worst first
    assert any(line.startswith("red host kvm09") for line in lines), lines
    assert "red kvm01/web-crash is crashed" in lines
    assert "amber kvm01/db-paused-old has been paused for 3.0 days" in lines
    assert not any("db-paused-new" in line for line in lines)  # paused for two hours: not yet a problem
    assert any(line.startswith("amber approval ") and "destroy by UREQ" in line for line in lines)
    assert "amber kvm02/app-02 has autostart on but is shut off" in lines
    assert "info no backup catalog: backup health is not known" in lines
    hosts = {s.title: s.summary for s in rep.sections}
    assert hosts["kvm09"].startswith("DOWN: kvm09")
    assert "libvirt 9." in hosts["kvm01"] and "memory" in hosts["kvm01"] and "pools: default" in hosts["kvm01"]
    assert "1 crashed" in hosts["kvm01"] and "2 paused" in hosts["kvm01"] and "2 shut off" in hosts["kvm01"]
    assert rep.summary[0].startswith("3 host(s), 2 answering; 8 VM(s)")
    assert rep.text().splitlines()[0] == rep.headline()


def test_a_report_asked_for_shows_only_what_the_askers_grants_cover(fleet: Bot) -> None:
    reply = fleet.handle("report status", Actor("UWEB", "C0OPS", source="slack"))
    assert reply.status is Status.OK and reply.report
    shown = reply.text()
    assert "web-crash" in shown and "kvm02" not in shown and "db-paused-old" not in shown and "kvm09" not in shown
    assert "your VMs" in shown and "memory" not in shown  # host facts need the whole host
    whole = fleet.handle("report status", Actor("UADMIN", "C0OPS", source="slack")).text()
    assert "kvm09" in whole and "db-paused-old" in whole and "app-02" in whole
    refused = fleet.handle("report status", Actor("UNOBODY", "C0OPS", source="slack"))
    assert refused.status is Status.REFUSED and refused.report is None


def test_autostart_health(fleet: Bot) -> None:
    facts = gather(fleet.fleet)
    now = datetime.now(UTC)

    @dataclass
    class Rec:
        kind: str
        host: str
        vm_uuid: str
        vm_name: str
        created_at: str
        status: str = "good"
        autostart: bool = False
        verified_at: str = ""
        verify_result: str = ""

    app01 = next(r for r in facts.rows if r.ref.name == "app-01")

    class Catalog:
        def entries(self, name=None, uuid=None, host=None):
            return [Rec("config", "kvm02", app01.ref.uuid, "app-01", now.isoformat(), autostart=True)]

    rep = autostart.report(facts, WHOLE_FLEET, now, expect=["kvm01/web-0*"], catalog=Catalog())
    lines = texts(rep.attention)
    assert "amber kvm02/app-02 has autostart on but is shut off" in lines
    assert "amber kvm01/web-01 is running and expected to autostart, but autostart is off" in lines
    assert "amber kvm02/app-01 autostart is off; it was on at the last config backup" in lines
    assert not any("web-02" in line for line in lines)  # shut off and no autostart: nothing to say
    back = autostart.report(facts, WHOLE_FLEET, now, returned={"kvm02": now - timedelta(minutes=5)})
    assert any(i.level == RED and "did not come back after kvm02 returned" in i.text for i in back.attention)
    assert any("not asked" in i.text and "kvm09" in i.text for i in rep.attention)


def test_backup_health_without_a_catalog_says_so(fleet: Bot) -> None:
    reply = fleet.handle("report backups", Actor("UADMIN", "C0OPS", source="slack"))
    assert "no backup catalog" in reply.text()
    assert reply.report and not [i for i in reply.report.attention if i.level in (RED, AMBER)]


def test_backup_health_green_amber_red_worst_first(fleet: Bot) -> None:
    facts = gather(fleet.fleet, ["kvm01"])
    now = datetime.now(UTC)
    sched = Schedule("UTC", {"config_backup": "0 2 * * *", "disk_backup": "0 3 * * *"}, disk_backup_vms=("db-*",))
    uuid = {r.ref.name: r.ref.uuid for r in facts.rows}

    @dataclass
    class Rec:
        kind: str
        vm_name: str
        age_h: float
        status: str = "good"
        verify_result: str = "ok"
        host: str = "kvm01"
        autostart: bool = False

        @property
        def vm_uuid(self) -> str:
            return uuid[self.vm_name]

        @property
        def created_at(self) -> str:
            return (now - timedelta(hours=self.age_h)).isoformat()

        @property
        def verified_at(self) -> str:
            return self.created_at if self.verify_result else ""

    records = [
        Rec("config", "web-01", 5),  # green
        Rec("config", "web-02", 30),  # amber: overdue
        Rec("config", "db-paused-old", 5),
        Rec("disk", "db-paused-old", 80),  # red: disk backup 80 h old against a daily schedule
        Rec("config", "db-paused-new", 5, verify_result="checksum mismatch"),  # red: failed verify
        Rec("disk", "db-paused-new", 5),
        Rec("config", "web-crash", 5, verify_result=""),
        Rec("config", "web-crash", 20, status="bad", verify_result=""),  # amber: a failure; never verified
    ]

    class Catalog:
        def entries(self, name=None, uuid=None, host=None):
            return records

    rep = backups.report(Catalog(), facts, sched, WHOLE_FLEET, now)
    by_vm = {i.vm: (i.level, i.text) for i in rep.attention}
    assert (
        by_vm["db-paused-old"][0] == RED and "disk backup is 3.3 days old (due every 24 h)" in by_vm["db-paused-old"][1]
    )
    assert by_vm["db-paused-new"][0] == RED and "last verify failed: checksum mismatch" in by_vm["db-paused-new"][1]
    assert by_vm["web-02"][0] == AMBER and "overdue" in by_vm["web-02"][1]
    assert by_vm["web-crash"][0] == AMBER and "1 failed backup(s)" in by_vm["web-crash"][1]
    assert by_vm["<!channel> x"][0] == RED and "no good config backup" in by_vm["<!channel> x"][1]
    assert "web-01" not in by_vm
    assert [i.level for i in rep.attention] == sorted((i.level for i in rep.attention), key=[RED, AMBER].index)


def test_scoped_report_for_a_user_with_no_grants_is_empty(fleet: Bot) -> None:
    scope = for_user(fleet.policy, "UNOBODY", "C0OPS")
    _, rep = fleet.desk.report("status", scope)
    assert rep.sections == [] and [i for i in rep.attention if i.level != INFO] == []


def test_autostart_expectations_come_from_the_config(tmp_path: Path) -> None:
    from bot.config import ConfigError, load

    base = '[hosts]\nkvm01 = "test:///default"\n[autostart]\n'
    (tmp_path / "good.toml").write_text(base + 'expect = ["web-*", "kvm01/db-*"]\n')
    assert load(tmp_path / "good.toml").autostart_expect == ("web-*", "kvm01/db-*")
    (tmp_path / "bad.toml").write_text(base + 'expect = "web-*"\n')
    with pytest.raises(ConfigError, match=r"autostart\.expect must be a list of VM globs"):
        load(tmp_path / "bad.toml")


def test_the_autostart_report_command_uses_the_configured_expectations(fleet: Bot) -> None:
    fleet.config.autostart_expect = ("kvm02/app-*",)
    text = fleet.handle("report autostart", Actor("UADMIN", "C0OPS", source="slack")).text()
    assert "kvm02/app-01 is running and expected to autostart, but autostart is off" in text
    assert "web-01 is running and expected" not in text


@pytest.mark.parametrize("who", ["vmbot:", "vmbot:../x", "vmbot:Scheduler", "scheduler", "vmbot:sched uler"])
def test_only_well_formed_bot_identities_are_granted(tmp_path: Path, who: str) -> None:
    from bot.policy import PolicyError

    with pytest.raises(PolicyError, match="is not a Slack user ID"):
        make_policy(tmp_path, f"roles:\n  v: [report]\ngrants:\n  - who: ['{who}']\n    role: v\n")


# -- hostile review ------------------------------------------------------------------------


def test_hostile_a_scoped_report_hides_freezes_of_hosts_outside_the_grants(fleet: Bot) -> None:
    fleet.freezes.freeze("kvm02", "UADMIN", "CVE-2026-1234 unpatched on kvm02")
    shown = fleet.handle("report status", Actor("UWEB", "C0OPS", source="slack")).text()
    assert "kvm02" not in shown and "CVE-2026-1234" not in shown, shown


def test_hostile_the_scheduled_digest_stays_inside_the_schedulers_grant(tmp_path: Path) -> None:
    hosts = {
        "lab01": write_host(tmp_path / "lab01.xml", [Vm("lab-vm")], pool_path="/p1"),
        "prod01": write_host(tmp_path / "prod01.xml", [Vm("payroll-db", "paused")], pool_path="/p2"),
    }
    policy = (
        "roles:\n  viewer: [list, report]\ngrants:\n  - who: [vmbot:scheduler]\n    role: viewer\n    hosts: [lab*]\n"
    )
    bot = bot_on(hosts, str(tmp_path / "v.db"), make_policy(tmp_path, policy))
    bot.config.slack = {"digest_channel": "C0LAB"}
    posted: list[str] = []
    bot.desk.publish = lambda channel, report: posted.append(report.text())
    try:
        assert bot.desk.as_system("digest")("").result in ("ok", "refused")
    finally:
        bot.close()
    assert all("prod01" not in text and "payroll-db" not in text for text in posted), posted
