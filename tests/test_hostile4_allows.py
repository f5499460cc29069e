"""Property: ``Policy.allows`` (list, App Home, the digest) answers every target as ``decide`` does, for random
grants (globs with ``*``, ``?``, ``[``, whole-host and VM-limited, channel-scoped, user groups) and hostile VM
and host names (``..``, ``a/b``, newlines, ``<!channel>``, ``[``), asked in any order, each twice."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.policy import Request, Target
from policies.engine import load_policy

HOSTILE = ["..", "a/b", "a\nb", "<!channel>", "[", "*", "?", "web-01", "web-1", "db-01", "", "Web-01", "a]"]
GLOBS = ["*", "web-*", "?b", "[", "[!w]*", "db-0?", "a/b", "..", "*\n*", "<!channel>", "kvm0*", "kvm01", "lab"]
HOSTS = ["kvm01", "kvm02", "lab", "..", "a/b", "[", "kvm0["]
USERS = ["U0ALICE", "U0BOB"]


grant = st.fixed_dictionaries(
    {
        "who": st.lists(st.sampled_from([*USERS, "S0TEAM"]), min_size=1, max_size=2, unique=True),
        "role": st.sampled_from(["viewer", "operator", "admin"]),
        "hosts": st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2),
    },
    optional={
        "vms": st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3),
        "channels": st.lists(st.sampled_from(["C0OPS", "C0LAB"]), max_size=2),
    },
)
target = st.builds(Target, st.sampled_from(HOSTS), st.sampled_from(HOSTILE), st.sampled_from(["u1", "u2"]))


@settings(max_examples=150, deadline=None)
@given(
    grants=st.lists(grant, min_size=0, max_size=4),
    user=st.sampled_from(USERS),
    channel=st.sampled_from(["C0OPS", "C0LAB"]),
    action=st.sampled_from(["list", "report", "start", "destroy", "help"]),
    targets=st.lists(target, min_size=1, max_size=12),
)
def allows_matches_decide(grants: list[dict], user: str, channel: str, action: str, targets: list[Target]) -> None:
    text = json.dumps(
        {
            "roles": {"viewer": ["list", "report"], "operator": ["viewer", "start"], "admin": ["*"]},
            "grants": grants,
        }
    )  # JSON is YAML: every hostile glob survives quoting
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yml"
        path.write_text(text)
        policy = load_policy(path, lambda _g: {"U0BOB"})
    judge, yes = policy.allows(user, channel, action), []
    for t in targets * 2:
        got = judge(t)
        yes.append(got)
        assert got is policy.decide(Request(user, channel, action, False, (t,))).allowed, (t, grants)
    ANSWERS.update(yes)


ANSWERS: set[bool] = set()


def test_allows_never_differs_from_decide() -> None:
    allows_matches_decide()
    assert {True, False} == ANSWERS  # it met targets allowed and denied, or it proved nothing
