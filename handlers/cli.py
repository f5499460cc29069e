"""``vmbot``: shell, exec, run and policy. Errors are one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.backup.files import StoreError
from bot.backup.front import rebuild
from bot.clone.templates import Sources
from bot.commands import Command, Targets, UsageError, parse
from bot.config import DEMO_DIR, Config, ConfigError, load
from bot.hypervisor.fleet import Fleet
from bot.hypervisor.pool import Pool
from bot.policy import NEW, DenyAll, Policy, PolicyError, Request, Target
from bot.service import Bot
from bot.store.audit import Actor, Audit, AuditError
from handlers.slack.groups import GroupMembers
from handlers.slack.run import run
from handlers.terminal.groups import terminal_groups
from handlers.terminal.identity import IdentityError, terminal_user, unix_user
from handlers.terminal.shell import actor, shell, show
from policies import cli as policy_cli
from policies.engine import load_policy

USAGE_EXIT = 2
PIPE_EXIT = 141  # what a shell reports for a process ended by SIGPIPE


def make_policy(config: Config, group_members: GroupMembers | None = None) -> Policy:
    """The demo's own policy (destroy and reset wait for the second demo user); a real config
    without a policy file fails closed.

    ``group_members`` comes from the front door that can resolve user groups
    (Slack's Web API); the policy gets it when it is built, never later.
    """
    if config.demo:
        return load_policy(DEMO_DIR / "policy.yml", group_members)
    if config.policy_file is None:
        return DenyAll(f"no policy file is configured ([policy] file in {config.source}); only help is allowed")
    return load_policy(config.policy_file, group_members)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmbot", description="Run libvirt VMs from Slack, safely.")
    sub = p.add_subparsers(dest="verb", required=True)
    sh = sub.add_parser("shell", help="interactive terminal adapter (reads a pipe too)")
    ex = sub.add_parser("exec", help="run one command: exit 0 done, 1 refused/failed, 2 usage, 3 waiting")
    for s in (sh, ex):
        s.add_argument("--config", help="TOML config (default: $VMBOT_CONFIG, else the demo fleet)")
        s.add_argument("--as", dest="as_user", metavar="USER_ID", help="act as this Slack user (demo or allow_as)")
    ex.add_argument("command", nargs=argparse.REMAINDER, help='-- "/vm start web-01"')
    run = sub.add_parser("run", help="the Slack bot (Socket Mode or HTTP)")
    run.add_argument("--config")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--http", type=int, metavar="PORT", help="serve POST /slack/events on 127.0.0.1:PORT")
    mode.add_argument("--socket", action="store_true", help="Socket Mode (default when SLACK_APP_TOKEN is set)")
    metrics = run.add_mutually_exclusive_group()
    metrics.add_argument("--metrics-port", type=int, default=9464, metavar="P", help="loopback /healthz and /metrics")
    metrics.add_argument("--no-metrics", action="store_true", help="no /healthz and /metrics listener")
    bk = sub.add_parser("backups", help="maintain the backup store")
    bk_sub = bk.add_subparsers(dest="backups_verb", required=True)
    reindex = bk_sub.add_parser("reindex", help="rebuild the backup catalog from the sets' manifests")
    reindex.add_argument("--config")
    pol = sub.add_parser("policy", help="check or explain a policy file")
    pol_sub = pol.add_subparsers(dest="policy_verb", required=True)
    check = pol_sub.add_parser("check", help="lint a policy file")
    check.add_argument("file")
    check.add_argument("--config", help="also warn about host globs that match none of its hosts")
    explain = pol_sub.add_parser("explain", help="which grant allows or denies a command")
    explain.add_argument("--config")
    explain.add_argument("--policy", metavar="FILE", help="this policy file instead of the config's")
    explain.add_argument("--as", dest="as_user", required=True, metavar="USER_ID")
    explain.add_argument("--channel", default="", metavar="CHANNEL_ID")
    explain.add_argument("command", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; a reader that goes away (``| head -1``) ends it quietly, like any Unix tool."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        return PIPE_EXIT


def _main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.verb == "policy":
            return policy_main(args)
        config = load(args.config)
        if args.verb == "backups":
            return backups_reindex(config)
        if args.verb == "run":
            return run(config, lambda groups: make_policy(config, groups), args)
        try:
            user = terminal_user(config, args.as_user)
        except IdentityError as e:
            refused_as(config, args.as_user, e)
            raise
        bot = Bot(config, make_policy(config, terminal_groups(os.environ)))
    except (ConfigError, PolicyError, IdentityError, AuditError) as e:
        print(f"vmbot: {e}", file=sys.stderr)
        return USAGE_EXIT
    try:
        if args.verb == "shell":
            sys.stdin.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]  # a bad line is refused, not fatal
            return shell(bot, user)
        return _exec(bot, user, args.command)
    finally:
        bot.close()


def backups_reindex(config: Config) -> int:
    """Rebuild the catalog from the manifests; exit 0, 1 if a set could not be read, 2 if not configured."""
    try:
        root, sets, dropped, swept, problems = rebuild(config)
    except StoreError as e:
        print(f"vmbot: {e}", file=sys.stderr)
        return USAGE_EXIT
    print(f"catalog rebuilt from {root}: {sets} backup set(s), {dropped} stale row(s) dropped, "
          f"{swept} unfinished set(s) removed")  # fmt: skip
    for line in problems:
        print(f"vmbot: {line}", file=sys.stderr)
    return 1 if problems else 0


def refused_as(config: Config, as_user: str | None, e: IdentityError) -> None:
    """A refused ``--as`` is audited, like a refused ``/as`` in the shell: who tried to be whom."""
    if config.demo:
        return
    try:
        me = terminal_user(config, None)
    except IdentityError:
        me = ""
    try:
        audit = Audit(config.store_path)
    except AuditError:
        return  # the caller prints the identity error; a store that cannot open says so on the next run
    try:
        who = Actor(user=me, unix_user=unix_user(), source="terminal")
        audit.record(who, "as", f"--as {as_user}", "as", "refused", "refused", str(e))
    except AuditError:
        pass
    finally:
        audit.close()


def _exec(bot: Bot, user: str, words: list[str]) -> int:
    words = words[1:] if words[:1] == ["--"] else words
    if not words:
        print('vmbot: exec needs a command: vmbot exec -- "/vm list --all"', file=sys.stderr)
        return USAGE_EXIT
    reply = bot.handle(shlex.join(words) if len(words) > 1 else words[0], actor(user))  # keep 'a b' one word
    show(reply)
    return reply.status.exit_code


def policy_main(args: argparse.Namespace) -> int:
    """``policy check`` and ``policy explain``; the config and the fleet are read here, not in policies/."""
    if args.policy_verb == "check":
        hosts = (lambda: list(load(args.config).hosts)) if args.config else None
        return policy_cli.check(Path(args.file), hosts)
    return explain(args)


def explain(args: argparse.Namespace) -> int:
    """Which grant allows or denies a command, with the VM looked up on the config's fleet."""
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        print('vmbot: explain needs a command: -- "/vm destroy web-01"', file=sys.stderr)
        return policy_cli.USAGE
    try:
        config = load(args.config)
        file = args.policy or config.policy_file
        if file is None:
            raise ConfigError("no policy file: give --policy FILE or a --config with [policy] file")
        policy = load_policy(file, terminal_groups(os.environ))
        cmd = parse(words[0] if len(words) == 1 else shlex.join(words))
    except (ConfigError, PolicyError, UsageError) as e:
        print(f"vmbot: {e}", file=sys.stderr)
        return policy_cli.USAGE
    targets, notes = resolve(cmd, config.hosts)
    if targets is None:
        print("\n".join(notes))
        return policy_cli.PROBLEMS
    request = Request(args.as_user, args.channel, cmd.action.name, cmd.action.changes_state, targets)
    return policy_cli.show(policy, request, notes)


def resolve(cmd: Command, hosts: dict[str, str]) -> tuple[tuple[Target, ...] | None, list[str]]:
    """The targets as the bot would see them: VMs through the fleet, hosts for freeze/thaw.

    A grant's host globs can only be judged against the host the VM is really
    on; ``host/name`` still works, unresolved, when that host does not answer.
    """
    kind = cmd.action.targets
    if kind is Targets.OPTIONAL_HOST:
        return tuple(Target(h, "", "") for h in (cmd.targets or list(hosts))), []
    if kind in (Targets.NONE, Targets.OPTIONAL_ACTION, Targets.OPTIONAL_VM, Targets.ID, Targets.RELOAD):
        return (), []
    pool = Pool(hosts, timeout=5.0)
    try:
        if cmd.new_names():
            return _making(cmd, Sources(Fleet(pool)))
        sel = Fleet(pool).resolve(cmd.vm_args())
    finally:
        pool.close()
    if not sel.problems:
        return tuple(Target(r.host, r.name, r.uuid) for r in sel.refs), []
    literal = [p.split("/", 1) for p in cmd.vm_args() if "/" in p and p.split("/", 1)[0] in hosts]
    if len(literal) == len(cmd.vm_args()):
        note = f"(not looked up: {'; '.join(sel.problems)})"
        return tuple(Target(h, n, "") for h, n in literal), [note]
    return None, sel.problems


def _making(cmd: Command, sources: Sources) -> tuple[tuple[Target, ...] | None, list[str]]:
    """clone / template create: the source as the bot finds it, and each VM it would make (kind "new")."""
    found = sources(cmd)
    if isinstance(found, str):
        return None, [found]
    ref = found.ref
    new = [Target(ref.host, sources.new_name(cmd, found, n), "", NEW) for n in cmd.new_names()]
    return (Target(ref.host, ref.name, ref.uuid), *new), []


if __name__ == "__main__":
    sys.exit(main())
