"""``vmbot policy check FILE`` and ``vmbot policy explain --as U --channel C -- "/vm ..."``.

Explain resolves the VM through the config's fleet (name, host/name or glob),
because a grant's host globs can only be judged against the host the VM is
really on; ``host/name`` still works, unresolved, when that host does not answer.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from pathlib import Path

from bot.commands import Command, Targets, UsageError, parse
from bot.config import ConfigError, load
from bot.policy import Request, Target
from policies.engine import Policy, load_policy
from policies.schema import Parsed, read

CLEAN, PROBLEMS, USAGE = 0, 1, 2


def policy_main(args: argparse.Namespace) -> int:
    if args.policy_verb == "check":
        return check(Path(args.file), args.config)
    return explain(args)


def check(path: Path, config: str | None = None) -> int:
    """Print every error and warning, one per line; exit 0 clean, 1 problems."""
    parsed = read(path)
    problems = parsed.errors + parsed.warnings
    if config and not parsed.errors:
        try:
            problems += unused_hosts(parsed, list(load(config).hosts))
        except ConfigError as e:
            print(f"vmbot: {e}", file=sys.stderr)
            return USAGE
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


def explain(args: argparse.Namespace) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        print('vmbot: explain needs a command: -- "/vm destroy web-01"', file=sys.stderr)
        return USAGE
    try:
        config = load(args.config)
        file = args.policy or config.policy_file
        if file is None:
            raise ConfigError("no policy file: give --policy FILE or a --config with [policy] file")
        policy = load_policy(file)
        cmd = parse(words[0] if len(words) == 1 else shlex.join(words))
    except (ConfigError, UsageError) as e:
        print(f"vmbot: {e}", file=sys.stderr)
        return USAGE
    targets, notes = resolve(cmd, config.hosts)
    if targets is None:
        print("\n".join(notes))
        return PROBLEMS
    request = Request(args.as_user, args.channel, cmd.action.name, cmd.action.changes_state, targets)
    return show(policy, request, notes)


def show(policy: Policy, request: Request, notes: list[str]) -> int:
    where = f" in {request.channel}" if request.channel else " (no channel given: channel-scoped grants do not apply)"
    on = ", ".join(f"{t.host}/{t.vm}" if t.vm else f"host {t.host}" for t in request.targets)
    print(f"{request.action}{' ' + on if on else ''} as {request.user}{where}")
    lines = policy.explain(request)
    print("\n".join([*notes, *lines]))
    return CLEAN if policy.decide(request).allowed else PROBLEMS


def resolve(cmd: Command, hosts: dict[str, str]) -> tuple[tuple[Target, ...] | None, list[str]]:
    """The targets as the bot would see them: VMs through the fleet, hosts for freeze/thaw."""
    kind = cmd.action.targets
    if kind is Targets.OPTIONAL_HOST:
        return tuple(Target(h, "", "") for h in (cmd.targets or list(hosts))), []
    if kind not in (Targets.ONE, Targets.MANY):
        return (), []
    from bot.hypervisor.fleet import Fleet
    from bot.hypervisor.pool import Pool

    pool = Pool(hosts, timeout=5.0)
    try:
        sel = Fleet(pool).resolve(cmd.targets)
    finally:
        pool.close()
    if not sel.problems:
        return tuple(Target(r.host, r.name, r.uuid) for r in sel.refs), []
    literal = [p.split("/", 1) for p in cmd.targets if "/" in p and p.split("/", 1)[0] in hosts]
    if len(literal) == len(cmd.targets):
        note = f"(not looked up: {'; '.join(sel.problems)})"
        return tuple(Target(h, n, "") for h, n in literal), [note]
    return None, sel.problems
