"""The YAML policy: decisions that name their grant, approvals, groups, reload, lint and explain."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bot.policy import PolicyError, Request, Target
from bot.reply import Status
from bot.service import Bot
from handlers.cli import main
from policies.engine import load_policy
from tests.conftest import write_fleet
from tests.policyrig import FLEET, POLICY, fleet_bot, make_policy, policy_file, rows, who

SKETCH = """\
roles:
  viewer:   [list, state, info, ip, hosts, audit]
  operator: [viewer, start, shutdown, reboot, suspend, resume, autostart]
  admin:    [operator, destroy, reset, undefine, dumpxml]
grants:
  - who: [U012ABCDEF, W0456GHIJ, S0789ONCALL]   # user IDs (U…/W…) or user-group IDs (S…)
    role: operator
    hosts: ["kvm0*"]
    vms: ["web-*", "app-*"]
    channels: [C0OPS]                 # optional: where the command may be typed
approvals:
  - actions: [destroy, reset]
    approvers: admin
    count: 1
    expires: 30m
limits:
  max_targets_without_approval: 5
"""
WEB = (Target("kvm01", "web-01", "u1"),)


def req(user: str, action: str, targets: tuple[Target, ...] = WEB, channel: str = "C0OPS") -> Request:
    return Request(user, channel, action, action not in ("list", "state", "help", "approvals"), targets)


def test_the_issue_sketch_loads_and_roles_include_roles(tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, SKETCH), lambda g: {"UONCALL"} if g == "S0789ONCALL" else set())
    assert (
        policy.rules.roles["admin"] >= {"start", "list", "destroy"} and "destroy" not in policy.rules.roles["operator"]
    )
    assert policy.rules.includes["admin"] == {"admin", "operator", "viewer"}
    assert policy.decide(req("UONCALL", "reboot")).allowed  # through the user group
    assert policy.decide(req("W0456GHIJ", "start")).reason == "grant #1 (line 6, role operator) allows start"


@pytest.mark.parametrize(
    ("user", "action", "targets", "channel", "allowed", "said"),
    [
        ("U012ABCDEF", "start", WEB, "C0OPS", True, "grant #1 (line 6, role operator) allows start"),
        ("U012ABCDEF", "start", WEB, "C0RANDOM", False, "only in C0OPS"),
        ("U012ABCDEF", "destroy", WEB, "C0OPS", False, "operator does not include destroy"),
        ("U012ABCDEF", "start", (Target("lab", "web-01", "u"),), "C0OPS", False, "host lab is not in kvm0*"),
        ("U012ABCDEF", "start", (Target("kvm01", "db-01", "u"),), "C0OPS", False, "db-01 is not in vms web-*, app-*"),
        ("U012ABCDEF", "start", (*WEB, Target("kvm02", "db-01", "u")), "C0OPS", False, "start kvm02/db-01"),
        ("UNOBODY", "list", (), "C0OPS", False, "denied by default: no grant names UNOBODY"),
        ("UNOBODY", "help", (), "C0OPS", True, "help is always allowed"),
        ("UNOBODY", "approvals", (), "C0OPS", False, "no grant names UNOBODY"),
        ("U012ABCDEF", "approvals", (), "C0ELSEWHERE", True, "allowed to anyone with a grant"),
        ("U012ABCDEF", "freeze", (Target("kvm01", "", ""),), "C0OPS", False, "operator does not include freeze"),
    ],
)
def test_decisions_name_the_grant(tmp_path: Path, user, action, targets, channel, allowed, said) -> None:
    decision = load_policy(policy_file(tmp_path, SKETCH)).decide(req(user, action, targets, channel))
    assert decision.allowed is allowed and said in decision.reason
    assert not allowed or action in ("help", "approvals") or decision.grant.startswith("grant #1")


def test_approvals_by_default_by_rule_and_by_width(tmp_path: Path) -> None:
    bare = "roles:\n  admin: ['*']\ngrants:\n  - {who: [U0ADM], role: admin}\n"
    policy = load_policy(policy_file(tmp_path, bare))
    for action in ("destroy", "reset"):  # no approvals section: still one approval
        d = policy.decide(req("U0ADM", action))
        assert d.needs_approval and d.approvals == 1 and d.expires_s == 1800 and d.approvers == ""
    assert not policy.decide(req("U0ADM", "undefine")).needs_approval
    ruled = bare + "approvals:\n  - {actions: [undefine], approvers: admin, count: 2, expires: 2h}\n"
    ruled += "  - {actions: [reset], count: 0}\nlimits: {max_targets_without_approval: 2}\n"
    policy = load_policy(policy_file(tmp_path, ruled))
    d = policy.decide(req("U0ADM", "undefine"))
    assert (d.needs_approval, d.approvals, d.approvers, d.expires_s) == (True, 2, "admin", 7200)
    assert not policy.decide(req("U0ADM", "reset")).needs_approval  # count: 0 turns the default off
    three = tuple(Target("kvm01", f"web-0{i}", str(i)) for i in range(3))
    assert "3 targets is more than 2" in policy.decide(req("U0ADM", "start", three)).reason
    assert not policy.decide(req("U0ADM", "start", three[:2])).needs_approval
    assert not policy.decide(req("U0ADM", "list", ())).needs_approval


def test_who_may_approve(tmp_path: Path) -> None:
    cut = SKETCH.index("approvals:")
    more = "  - {who: [UADMIN, UOTHER], role: admin}\n  - {who: [UWEBADM], role: admin, vms: [web-*]}\n"
    text = SKETCH[:cut] + more + SKETCH[cut:]
    policy = load_policy(policy_file(tmp_path, text))
    asked = req("UADMIN", "destroy", (*WEB, Target("kvm02", "db-01", "u")), channel="C0OPS")
    assert not policy.approver("UADMIN", asked).allowed  # never the requester
    assert policy.approver("UOTHER", asked).allowed  # from any channel: grant channels do not apply
    assert not policy.approver("U012ABCDEF", asked).allowed  # operator, not admin
    check = policy.approver("UWEBADM", asked)
    assert not check.allowed and "kvm02/db-01" in check.reason  # admin of web-* only: not every target


def test_user_groups_are_cached_until_reload_and_a_failing_lookup_denies(tmp_path: Path) -> None:
    calls: list[str] = []
    members = {"UONCALL"}

    def lookup(group: str) -> set[str]:
        calls.append(group)
        if not members:
            raise ConnectionError("usergroups.users.list failed")
        return set(members)

    policy = load_policy(policy_file(tmp_path, SKETCH), lookup)
    assert policy.decide(req("UONCALL", "start")).allowed and policy.decide(req("UONCALL", "reboot")).allowed
    assert calls == ["S0789ONCALL"]
    members.clear()
    policy.reload()
    assert not policy.decide(req("UONCALL", "start")).allowed and len(calls) == 3  # reload, then this decision


def test_reload_reads_the_file_again_and_keeps_the_old_rules_on_error(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    bot = fleet_bot(make_bot, tmp_path)
    assert bot.handle("start db-01", who("UOPS")).status is Status.OK
    policy_file(tmp_path, POLICY.replace("roles:\n", "roles:\n  oops: [sttart]\n"))
    broken = bot.handle("policy reload", who("UADM2"))
    assert broken.status is Status.FAILED and "the old one stays" in broken.headline and "line 2" in broken.headline
    assert bot.handle("shutdown db-01", who("UOPS")).status is Status.OK  # old rules still in force
    policy_file(tmp_path, POLICY.replace("[UOPS]", "[UOTHER]"))
    assert bot.handle("policy reload", who("UOPS")).status is Status.REFUSED  # operators may not reload
    assert bot.handle("policy reload", who("UADM2")).status is Status.OK
    assert bot.handle("start db-01", who("UOPS")).status is Status.REFUSED
    assert [r["result"] for r in rows(bot, "action = 'policy'")] == ["failed", "refused", "ok"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("roles:\n  a: [list\n", "line 3: not valid YAML"),
        ("roles:\n  a: [list]\n  a: [start]\n", "line 3: not valid YAML: duplicate key 'a' (first on line 2)"),
        ("roles:\n  viewer: [list, strat]\n", "line 2: role viewer: 'strat' is neither a role nor an action"),
        ("roles:\n  a: [b]\n  b: [a]\n", "roles include each other in a cycle: a -> b -> a"),
        ("roles:\n  start: [list]\n", "role 'start' has the name of an action"),
        (
            "roles: {a: [list]}\ngrants:\n  - who: [alice]\n    role: a\n",
            "line 3: grant #1: 'alice' is not a Slack user ID",
        ),
        ("roles: {a: [list]}\ngrants:\n  - who: [U1234]\n    role: b\n", "line 3: grant #1: unknown role 'b'"),
        ("roles: {a: [list]}\ngrants:\n  - {who: [U1234], role: a, chanels: [C1]}\n", "did you mean channels?"),
        ("approvals:\n  - {actions: [destroy], expires: soon}\n", "line 2: approvals: expires must be like 30m"),
        ("approvals:\n  - {actions: [destory]}\n", "unknown action 'destory'; did you mean destroy, restore?"),
        ("approvals:\n  - {actions: [reset], count: -1}\n", "count must be a whole number >= 0"),
        ("limits: {max_targets_without_approval: 0}\n", "max_targets_without_approval must be a whole number >= 1"),
        ("rolez: {}\n", "unknown key 'rolez' in the policy; did you mean roles?"),
        ("- just a list\n", "line 1: the policy must be a mapping"),
    ],
)
def test_a_malformed_file_is_refused_with_line_and_reason(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(policy_file(tmp_path, text))
    assert said in str(e.value) and str(tmp_path / "policy.yml") in str(e.value)
    assert "\n" not in str(e.value)


def config(tmp_path: Path, policy: str = "policy.yml") -> Path:
    hosts = "\n".join(f'{h} = "{write_fleet(tmp_path / f"{h}.xml", vms)}"' for h, vms in FLEET.items())
    path = tmp_path / "vmbot.toml"
    path.write_text(
        f'[hosts]\n{hosts}\n[policy]\nfile = "{policy}"\n[store]\npath = "v.db"\n[terminal]\nallow_as = true\n'
    )
    return path


def test_start_up_with_a_malformed_policy_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    policy_file(tmp_path, "roles:\n  a: [list\n")
    assert main(["exec", "--config", str(config(tmp_path)), "--as", "UREQ", "--", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vmbot: ") and "policy.yml: line 3: not valid YAML" in err


def test_policy_check(tmp_path: Path, capsys) -> None:
    assert main(["policy", "check", str(policy_file(tmp_path, SKETCH))]) == 0
    assert "ok (3 roles, 1 grants, 1 approval rules)" in capsys.readouterr().out
    extra = "  - {who: [U1234], role: viewer, channels: [ops]}\n  - {who: [], role: admin, hosts: []}\napprovals:"
    bad = SKETCH.replace("role: operator", "role: operater").replace("approvals:", extra)
    assert main(["policy", "check", str(policy_file(tmp_path, bad))]) == 1
    out = capsys.readouterr().out
    assert "line 6: grant #1: unknown role 'operater'; did you mean operator?" in out
    assert "grant #2 can never match channel 'ops'" in out and "grant #3 can never match: who is empty" in out
    assert "1 error(s), 3 warning(s)" in out
    lab = SKETCH.replace('["kvm0*"]', '["lab*"]')
    assert main(["policy", "check", "--config", str(config(tmp_path)), str(policy_file(tmp_path, lab))]) == 1
    assert "hosts lab* match none of kvm01, kvm02" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("user", "channel", "command", "code", "said"),
    [
        ("UREQ", "C0OPS", "/vm destroy web-01", 0, "needs 1 approval(s)"),
        ("UOPS", "C0OPS", "/vm destroy web-01", 1, "grant #2 (line 8, role operator): does not apply: operator"),
        ("UOPS", "C0OPS", "/vm start db-01", 0, "runs at once"),
        ("UOPS", "C0ELSE", "/vm start db-01", 1, "only in C0OPS"),
        ("UWEB", "", "/vm reset kvm02/app-01", 1, "host kvm02 is not in kvm01"),
        ("UWEB", "", "/vm freeze kvm01", 1, "the whole host is not in vms web-*"),
        ("UREQ", "", "/vm start nosuch", 1, "no VM named 'nosuch'"),
    ],
)
def test_policy_explain(tmp_path: Path, capsys, user, channel, command, code, said) -> None:
    policy_file(tmp_path)
    args = ["policy", "explain", "--as", user, "--channel", channel, "--config", str(config(tmp_path)), "--", command]
    assert main(args) == code
    assert said in capsys.readouterr().out


def test_explain_with_another_policy_file(tmp_path: Path, capsys) -> None:
    other = tmp_path / "next.yml"
    other.write_text(POLICY.replace("[UOPS]", "[UNEW]"))
    policy_file(tmp_path)
    args = ["policy", "explain", "--as", "UNEW", "--channel", "C0OPS", "--config", str(config(tmp_path))]
    assert main([*args, "--policy", str(other), "--", "/vm start db-01"]) == 0
    assert "ALLOWED: grant #2" in capsys.readouterr().out
    assert make_policy(tmp_path).decide(req("UNEW", "start")).allowed is False


MIXED = """\
roles:
  viewer: [list, state]
  operator: [viewer, start]
grants:
  - who: [U0WHOLE]
    role: viewer
    hosts: ["kvm0*"]
  - who: [U0MIXED]
    role: viewer
    hosts: [kvm01]
  - who: [U0MIXED]
    role: operator
    hosts: [kvm02]
    vms: ["web-*", "*b"]
  - who: [U0MIXED]
    role: viewer
    hosts: [lab]
    vms: ["db-*"]
    channels: [C0OPS]
"""
MANY = [
    Target(h, vm, f"{h}-{vm}")
    for h in ("kvm01", "kvm02", "lab", "kvm11", "other")
    for vm in ("web-01", "db-01", "ab", "<!channel>", "a\nb", "..", "")
]


@pytest.mark.parametrize("user", ["U0WHOLE", "U0MIXED", "U0NOBODY"])
@pytest.mark.parametrize("channel", ["C0OPS", "C0ELSE"])
@pytest.mark.parametrize("action", ["list", "start", "destroy", "help"])
def test_allows_answers_as_decide_does_for_every_target(tmp_path: Path, user: str, channel: str, action: str) -> None:
    """``allows`` (one request's judge of many VMs: list, App Home, the digest) never differs from ``decide``,
    whether the grants limit VMs (then each VM is judged) or not (then one decision per host)."""
    policy = make_policy(tmp_path, MIXED)
    judge = policy.allows(user, channel, action)
    for target in MANY * 2:  # twice: a remembered answer is the same answer
        expected = policy.decide(Request(user, channel, action, False, (target,))).allowed
        assert judge(target) is expected, (user, channel, action, target)
    some = {"U0WHOLE": {"list"}, "U0MIXED": {"list", "start"}, "U0NOBODY": set()}[user] | {"help"}
    assert any(judge(t) for t in MANY) is (action in some)  # the cases are not all "no"


def test_allows_decides_once_per_host_when_no_grant_limits_vms(tmp_path: Path) -> None:
    """100 VMs on a host under a whole-host grant cost one decision (the user's grants are read once);
    a VM-limited grant is judged VM by VM (a per-VM grant still holds)."""
    asked: list[str] = []

    def members(group: str) -> set[str]:
        asked.append(group)
        return {"U0ONCALL"}

    text = "roles:\n  viewer: [list]\ngrants:\n  - who: [S0ONCALL]\n    role: viewer\n    hosts: [kvm01]\n"
    policy = load_policy(policy_file(tmp_path, text), members)
    policy.group_ttl = 0  # every look at the group asks again: counts how often the grants are read
    judge = policy.allows("U0ONCALL", "C0OPS", "list")
    assert asked == ["S0ONCALL"]
    assert all(judge(Target("kvm01", f"vm-{i}", str(i))) for i in range(100))
    assert not any(judge(Target("kvm02", f"vm-{i}", str(i))) for i in range(100))
    assert asked == ["S0ONCALL"]  # not once per VM
    limited = make_policy(tmp_path, MIXED).allows("U0MIXED", "C0OPS", "list")
    assert [limited(Target("lab", vm, vm)) for vm in ("db-01", "web-01", "db-02")] == [True, False, True]
