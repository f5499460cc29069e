"""Property tests: over random policies, users, channels and commands, nothing runs without an allowing
grant, and an approval-needing action never runs before enough distinct, permitted, non-requester approvals.

Examples are valid by construction (no filtering): the approval property draws an action with targets in
a state it applies to, and approvers who hold the role, so most examples reach the execution path. Each
test counts its outcomes and prints the share that ran (``pytest -s``), and labels them with hypothesis
``event()`` (``--hypothesis-show-statistics``).

The oracle below is written from the policy's plain meaning, independently of policies/engine.py; the
bot under test is the real one on libvirt's test driver, so "ran" means an execution audit row and a
state change on a real (test-driver) domain.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.policy import Decision, Request, Target
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from policies.engine import Policy
from policies.schema import parse
from tests.conftest import Vm

USERS = ["U0AAA", "U0BBB", "U0CCC"]
GROUP, MEMBERS = "S0GRP", {"U0BBB", "U0CCC"}
CHANNELS = ["C0ONE", "C0TWO"]
CHANGES = ["start", "shutdown", "suspend", "resume", "reboot", "reset", "destroy"]
ROLES = ["r0", "r1", "r2"]
WANT = {"a": "running", "b": "shut off", "c": "paused", "a2": "running", "web": "running"}
FLEET = {"h1": [Vm("a"), Vm("b", "shut off"), Vm("c", "paused")], "h2": [Vm("a2"), Vm("web")]}
PATTERNS = ["a", "b", "c", "h2/a2", "web", "a*", "*"]
RUNNING = ["a", "h2/a2", "web", "a*"]
APPLIES = {"start": ["b"], "resume": ["c"]} | {
    a: RUNNING for a in ("shutdown", "suspend", "reboot", "reset", "destroy")
}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# An action and a pattern whose every VM is in a state the action applies to (see WANT): never refused for state.
applicable = st.sampled_from(CHANGES).flatmap(lambda a: st.tuples(st.just(a), st.sampled_from(APPLIES[a])))


@pytest.fixture(scope="module")
def tally() -> Iterator[dict[str, int]]:
    """Outcomes per test, printed at the end: the share of examples that reached the execution path."""
    counts: dict[str, int] = {}
    yield counts
    for test in sorted({k.split(":")[0] for k in counts}):
        ran, total = counts.get(f"{test}:ran", 0), counts.get(f"{test}:all", 0)
        print(f"\n{test}: {ran} of {total} examples executed ({ran / max(total, 1):.0%})")


def tally_count(tally: dict[str, int], test: str, ran: bool) -> None:
    tally[f"{test}:all"] = tally.get(f"{test}:all", 0) + 1
    tally[f"{test}:ran"] = tally.get(f"{test}:ran", 0) + ran


grants = st.fixed_dictionaries(
    {
        "who": st.lists(st.sampled_from([*USERS, GROUP]), min_size=1, max_size=3, unique=True),
        "role": st.sampled_from(ROLES),
        "hosts": st.lists(st.sampled_from(["*", "*", "h1", "h2", "h*", "x*"]), min_size=1, max_size=2),
        "vms": st.lists(st.sampled_from(["*", "*", "a*", "b", "c", "web"]), min_size=1, max_size=2),
    },
    optional={"channels": st.lists(st.sampled_from(CHANNELS), max_size=2)},
)
rules = st.fixed_dictionaries(
    {
        "actions": st.lists(st.sampled_from(CHANGES), min_size=1, max_size=3, unique=True),
        "approvers": st.sampled_from(ROLES),
        "count": st.integers(0, 2),
    }
)


@st.composite
def policies(draw: st.DrawFn) -> dict:
    roles = {}
    for i, name in enumerate(ROLES):
        items = draw(st.lists(st.sampled_from(CHANGES), max_size=7, unique=True))
        roles[name] = items + ([ROLES[i - 1]] if i and draw(st.booleans()) else [])
    limits = draw(st.none() | st.integers(1, 3))
    return {
        "roles": roles,
        "grants": draw(st.lists(grants, max_size=5)),
        "approvals": draw(st.lists(rules, max_size=2)),
        "limits": {"max_targets_without_approval": limits} if limits else {},
    }


# -- the oracle: what the policy text means --------------------------------------------


def role_closure(pol: dict, role: str) -> set[str]:
    out = {role}
    for item in pol["roles"][role]:
        if item in pol["roles"]:
            out |= role_closure(pol, item)
    return out


def actions_of(pol: dict, role: str) -> set[str]:
    return {a for r in role_closure(pol, role) for a in pol["roles"][r] if a not in pol["roles"]}


def names(grant: dict, user: str) -> bool:
    return user in grant["who"] or (GROUP in grant["who"] and user in MEMBERS)


def covers(grant: dict, host: str, vm: str) -> bool:
    hosts, vms = grant["hosts"], grant["vms"]
    return any(fnmatch.fnmatchcase(host, p) for p in hosts) and any(fnmatch.fnmatchcase(vm, p) for p in vms)


def allowed(pol: dict, user: str, channel: str, action: str, targets: list[tuple[str, str]]) -> bool:
    def one(g: dict, host: str, vm: str) -> bool:
        in_channel = "channels" not in g or channel in g["channels"]
        return names(g, user) and in_channel and action in actions_of(pol, g["role"]) and covers(g, host, vm)

    return all(any(one(g, h, v) for g in pol["grants"]) for h, v in targets)


def needed(pol: dict, action: str, n: int) -> tuple[int, str | None] | None:
    for rule in pol["approvals"]:
        if action in rule["actions"]:
            return (rule["count"], rule["approvers"]) if rule["count"] else None
    limit = pol["limits"].get("max_targets_without_approval")
    return (1, None) if action in ("destroy", "reset") or (limit and n > limit) else None


def may_approve(pol: dict, user: str, requester: str, action: str, role: str | None, targets: list) -> bool:
    def one(g: dict, host: str, vm: str) -> bool:
        has = role in role_closure(pol, g["role"]) if role else action in actions_of(pol, g["role"])
        return names(g, user) and has and covers(g, host, vm)

    return user != requester and all(any(one(g, h, v) for g in pol["grants"]) for h, v in targets)


# -- the bot -----------------------------------------------------------------------------


class Current:
    """The policy of the example in progress: the bot is built once per test, the rules change per example."""

    def __init__(self) -> None:
        self.policy: Policy | None = None

    def decide(self, request: Request) -> Decision:
        assert self.policy is not None
        return self.policy.decide(request)

    def allows(self, user: str, channel: str, action: str) -> Callable[[Target], bool]:
        assert self.policy is not None
        return self.policy.allows(user, channel, action)

    def approver(self, user: str, request: Request) -> Decision:
        assert self.policy is not None
        return self.policy.approver(user, request)


@pytest.fixture
def bot(make_bot: Callable[..., Bot]) -> Bot:
    return make_bot(fleet=FLEET, policy=Current())


def use(bot: Bot, pol: dict) -> dict:
    parsed = parse(yaml.safe_dump(pol), "generated")
    assert parsed.errors == [] and isinstance(bot.policy, Current)
    bot.policy.policy = Policy(Path("generated.yml"), parsed.rules, lambda g: set(MEMBERS) if g == GROUP else set())
    return pol


def reset(bot: Bot) -> None:
    """Every example starts from the same fleet: a, a2, web running, b shut off, c paused."""
    for host, vms in FLEET.items():
        for vm in vms:
            bot.pool.call(host, lambda c, name=vm.name: _settle(c.lookupByName(name), WANT[name]))


def _settle(dom: libvirt.virDomain, want: str) -> None:
    state = dom.state()[0]
    if (state, want) in ((libvirt.VIR_DOMAIN_RUNNING, "running"), (libvirt.VIR_DOMAIN_PAUSED, "paused")):
        return
    if dom.isActive():
        dom.destroy()
    if want != "shut off":
        dom.create()
    if want == "paused":
        dom.suspend()


def snapshot(bot: Bot) -> dict[str, str]:
    return {str(r.ref): r.state.name for r in bot.fleet.inventory().rows}


def runs_since(bot: Bot, last: int) -> list[dict]:
    """Execution rows (decision 'allowed' on a state-changing action) written after row ``last``."""
    marks = ", ".join("?" * len(CHANGES))
    where = f"id > ? and decision = 'allowed' and action in ({marks})"
    return list(bot.audit.db["operations"].rows_where(where, [last, *CHANGES]))  # type: ignore[union-attr]


def last_row(bot: Bot) -> int:
    return bot.audit.db.execute("select coalesce(max(id), 0) from operations").fetchone()[0]


@SETTINGS
@given(
    pol=policies(),
    user=st.sampled_from([*USERS, "U0ZZZ"]),
    channel=st.sampled_from(CHANNELS),
    command=applicable | applicable | st.tuples(st.sampled_from(CHANGES), st.sampled_from(PATTERNS)),
    grant=st.none() | st.sampled_from(ROLES),
)
def test_nothing_changes_without_an_allowing_grant(
    bot: Bot, tally: dict[str, int], pol, user, channel, command, grant
) -> None:
    action, pattern = command  # mostly one whose VMs are in a state it applies to; sometimes any
    if grant:  # often the user holds a role that has the action (maybe only in some channel or on some VMs)
        pol["roles"][grant] = sorted({*pol["roles"][grant], action})
        pol["grants"].append({"who": [user], "role": grant, "hosts": ["*"], "vms": ["*"]})
    use(bot, pol)
    reset(bot)
    targets = [(r.host, r.name) for r in bot.fleet.resolve([pattern]).refs]
    before, mark = snapshot(bot), last_row(bot)
    reply = bot.handle(f"{action} {pattern} --yes", Actor(user, channel))
    ran = runs_since(bot, mark)
    ok, need = allowed(pol, user, channel, action, targets), needed(pol, action, len(targets))
    if ran or snapshot(bot) != before:
        assert ok and need is None, reply.text()
    if reply.status is Status.PENDING:
        assert ok and need is not None and not ran
    event("ran" if ran else reply.status.value)
    tally_count(tally, "allowing grant", bool(ran))
    assert ("denied" in reply.headline) == (not ok), reply.text()


@st.composite
def approvals(draw: st.DrawFn) -> dict:
    """A request that is valid by construction, and the clicks on it.

    The requester may ask (a grant on every VM) and the action needs ``count`` approvals; usually
    enough other people hold the approvers' role everywhere, and the clicks are theirs mixed with
    clicks that must not count: the requester, repeats, strangers, people with random grants.
    """
    requester = draw(st.sampled_from(USERS))
    action, pattern = draw(applicable)
    rule = {"approvers": draw(st.sampled_from(ROLES)), "count": draw(st.integers(1, 2)), "actions": [action]}
    others = [u for u in USERS if u != requester]
    helpers = draw(st.lists(st.sampled_from(others), min_size=0, max_size=2, unique=True))
    if draw(st.integers(0, 3)) != 3:  # mostly enough of them (hypothesis favours small draws: 3 is the rarer case)
        helpers = (helpers + [u for u in others if u not in helpers])[: rule["count"]]
    noise = draw(st.lists(st.sampled_from([*USERS, "U0ZZZ"]), max_size=4))
    clicks = draw(st.permutations(helpers + noise))
    return {"requester": requester, "action": action, "pattern": pattern, "rule": rule, "helpers": helpers,
            "clicks": clicks}  # fmt: skip


@SETTINGS
@given(pol=policies(), case=approvals())
def test_approval_needs_enough_distinct_permitted_other_people(bot: Bot, tally: dict[str, int], pol, case) -> None:
    requester, action, rule, clicks = case["requester"], case["action"], case["rule"], case["clicks"]
    pol["roles"]["r2"] = sorted({*pol["roles"]["r2"], action})  # the requester may ask, on every VM ...
    pol["grants"].insert(0, {"who": [requester], "role": "r2", "hosts": ["*"], "vms": ["*"]})
    pol["approvals"].insert(0, rule)  # ... and it needs approval
    for helper in case["helpers"]:
        pol["grants"].append({"who": [helper], "role": rule["approvers"], "hosts": ["*"], "vms": ["*"]})
    use(bot, pol)
    reset(bot)
    mark = last_row(bot)
    reply = bot.handle(f"{action} {case['pattern']} --yes", Actor(requester, "C0ONE"))
    assert reply.status is Status.PENDING and reply.request_id, reply.text()  # valid by construction
    req = bot.request(reply.request_id)
    assert req is not None and not runs_since(bot, mark)
    need = needed(pol, action, len(req.targets))
    assert need is not None
    count, role = need
    targets = [(t.host, t.name) for t in req.targets]
    permitted: set[str] = set()
    for user in clicks:
        before = snapshot(bot)
        bot.approve(req.id, Actor(user, "C0TWO"))
        if may_approve(pol, user, requester, action, role, targets) and len(permitted) < count:
            permitted.add(user)
        ran = runs_since(bot, mark)
        assert len(ran) <= len(targets)  # one execution: one row per target, never two runs
        if len(permitted) < count:
            assert not ran and snapshot(bot) == before
        else:
            assert ran and {r["vm_name"] for r in ran} == {name for _, name in targets}
    event(f"ran after {count} approval(s)" if len(permitted) >= count else "still waiting")
    tally_count(tally, "approval", len(permitted) >= count)
