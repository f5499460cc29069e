"""``vmbot policy check FILE`` and ``vmbot policy explain``: the policy's side of them.

What needs the config or the fleet (which hosts exist, which VM a name is on)
is found by the front door (``handlers/cli.py``) and handed in, so this
package never opens a libvirt connection or reads the bot's config.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

from bot.policy import NEW, Request
from policies.engine import Policy
from policies.schema import Parsed, read

CLEAN, PROBLEMS, USAGE = 0, 1, 2


def check(path: Path, hosts: Callable[[], list[str]] | None = None) -> int:
    """Print every error and warning, one per line; exit 0 clean, 1 problems.

    ``hosts`` is asked only when the file itself is sound: grants are then also
    checked against the configured hosts.
    """
    parsed = read(path)
    problems = parsed.errors + parsed.warnings
    if not parsed.errors and not parsed.rules.grants:
        problems.append(f"{path}: the policy grants nothing: every action but help is refused")
    if hosts is not None and not parsed.errors:
        problems += unused_hosts(parsed, hosts())
    for line in problems:
        print(line)
    if problems:
        print(f"{path}: {len(parsed.errors)} error(s), {len(problems) - len(parsed.errors)} warning(s)")
        return PROBLEMS
    r = parsed.rules
    print(f"{path}: ok ({len(r.roles)} roles, {len(r.grants)} grants, {len(r.approvals)} approval rules)")
    return CLEAN


def unused_hosts(parsed: Parsed, hosts: list[str]) -> list[str]:
    """Grants whose host globs match none of the configured hosts can never match."""
    out = []
    for g in parsed.rules.grants:
        if g.hosts and not any(fnmatch.fnmatchcase(h, pat) for h in hosts for pat in g.hosts):
            out.append(
                f"line {g.line}: grant #{g.index} can never match: hosts {', '.join(g.hosts)} "
                f"match none of {', '.join(hosts)}"
            )
    return out


def show(policy: Policy, request: Request, notes: list[str]) -> int:
    """Each grant naming the user and what it says about the request; exit 0 allowed, 1 denied."""
    where = f" in {request.channel}" if request.channel else " (no channel given: channel-scoped grants do not apply)"
    on = ", ".join(
        (f"new VM {t.host}/{t.vm}" if t.kind == NEW else f"{t.host}/{t.vm}") if t.vm else f"host {t.host}"
        for t in request.targets
    )
    print(f"{request.action}{' ' + on if on else ''} as {request.user}{where}")
    lines = policy.explain(request)
    print("\n".join([*notes, *lines]))
    return CLEAN if policy.decide(request).allowed else PROBLEMS
