"""Reading a policy file into rules, with the line number of every mistake.

Every problem is collected (not only the first) so ``vmbot policy check`` can
list them all; start-up refuses a file with any error, because a typo in a
role must never silently widen or narrow who may power off production.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.policy import ACTIONS, CHANNEL_ID, GROUP_ID, USER_ID, suggest

SYSTEM_ID = re.compile(r"^vmbot:[a-z][a-z0-9-]{0,30}$")  # the bot's own identities (vmbot:scheduler)
DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
ALL = "*"
DEFAULT_EXPIRES = 1800
TOP = {"roles", "grants", "approvals", "limits"}
GRANT_KEYS = {"who", "role", "hosts", "vms", "channels", "name"}
RULE_KEYS = {"actions", "approvers", "count", "expires"}
LIMIT_KEYS = {"max_targets_without_approval"}


class LineDict(dict):
    line = 0
    key_lines: dict[Any, int] = {}  # noqa: RUF012 - replaced per instance

    def at(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    line = 0
    lines: list[int] = []  # noqa: RUF012 - replaced per instance


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers where each mapping and list starts, and refuses duplicate keys."""


def _map(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    d = LineDict(loader.construct_mapping(node, deep=True))
    d.line = node.start_mark.line + 1
    d.key_lines = seen
    return d


def _seq(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_sequence(node, deep=True))
    out.line = node.start_mark.line + 1
    out.lines = [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _seq)


@dataclass(frozen=True)
class Grant:
    index: int
    line: int
    who: tuple[str, ...]
    role: str
    hosts: tuple[str, ...]
    vms: tuple[str, ...]
    channels: tuple[str, ...] | None
    actions: frozenset[str]  # the role's actions, roles included
    roles: frozenset[str]  # the role and every role it includes

    @property
    def label(self) -> str:
        return f"grant #{self.index} (line {self.line}, role {self.role})"

    def host_ok(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, g) for g in self.hosts)

    def vm_ok(self, vm: str) -> bool:
        """A host-level target (vm "") needs a grant over every VM on the host."""
        if vm == "":
            return ALL in self.vms
        return any(fnmatch.fnmatchcase(vm, g) for g in self.vms)


@dataclass(frozen=True)
class Rule:
    line: int
    actions: frozenset[str]
    approvers: str | None  # None: anyone whose grant allows the action on every target
    count: int
    expires: int
    why: str = ""


@dataclass
class Rules:
    roles: dict[str, frozenset[str]] = field(default_factory=dict)  # role -> actions
    includes: dict[str, frozenset[str]] = field(default_factory=dict)  # role -> roles reachable
    grants: list[Grant] = field(default_factory=list)
    approvals: list[Rule] = field(default_factory=list)
    max_targets: int | None = None


@dataclass
class Parsed:
    rules: Rules
    errors: list[str] = field(default_factory=list)  # refuse the file
    warnings: list[str] = field(default_factory=list)  # grants that can never match


def read(path: Path) -> Parsed:
    """Parse a policy file; syntax errors become one error line with the line number."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return Parsed(Rules(), [f"{path}: cannot read it: {e}"])
    return parse(text, str(path))


def parse(text: str, name: str = "policy") -> Parsed:
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}" if mark else "?"
        return Parsed(Rules(), [f"{name}: {where}: not valid YAML: {e.problem or e.context}"])
    except yaml.YAMLError as e:
        return Parsed(Rules(), [f"{name}: not valid YAML: {e}"])
    out = Parsed(Rules())
    _Reader(name, out).top(data if data is not None else LineDict())
    return out


class _Reader:
    def __init__(self, name: str, out: Parsed) -> None:
        self.name, self.out, self.rules = name, out, out.rules

    def err(self, line: int, text: str) -> None:
        self.out.errors.append(f"{self.name}: line {line}: {text}")

    def warn(self, line: int, text: str) -> None:
        self.out.warnings.append(f"{self.name}: line {line}: {text}")

    def top(self, data: Any) -> None:
        if not isinstance(data, dict):
            self.err(getattr(data, "line", 1), "the policy must be a mapping with roles, grants, approvals, limits")
            return
        self.keys(data, TOP, "the policy")
        self.roles(data.get("roles") or LineDict())
        for i, g in enumerate(self.listed(data, "grants"), 1):
            self.grant(i, g)
        for r in self.listed(data, "approvals"):
            self.rule(r)
        self.limits(data.get("limits") or LineDict())

    def keys(self, d: dict, allowed: set[str], what: str) -> None:
        for k in d:
            if k not in allowed:
                self.err(getattr(d, "line", 0), f"unknown key '{k}' in {what}{suggest(str(k), sorted(allowed))}")

    def listed(self, data: dict, key: str) -> list:
        value = data.get(key) or LineList()
        if not isinstance(value, list):
            self.err(getattr(data, "line", 1), f"{key} must be a list")
            return []
        return value

    def strings(self, value: Any, line: int, what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.err(getattr(value, "line", line), f"{what} must be a list of strings")
            return ()
        return tuple(value)

    def roles(self, roles: Any) -> None:
        if not isinstance(roles, dict):
            self.err(getattr(roles, "line", 1), "roles must map a role name to a list of actions and roles")
            return
        at = roles.at if isinstance(roles, LineDict) else (lambda _k: 0)
        raw = {str(k): self.strings(v, at(k), f"role {k}") for k, v in roles.items()}
        for name, items in raw.items():
            if name in ACTIONS:
                self.err(at(name), f"role '{name}' has the name of an action; pick another name")
            for item in items:
                if item not in raw and item not in ACTIONS and item != ALL:
                    hint = suggest(item, [*raw, *ACTIONS])
                    self.err(at(name), f"role {name}: '{item}' is neither a role nor an action{hint}")
        for name in raw:
            reach = self.closure(name, raw, at(name))
            self.rules.includes[name] = frozenset(reach)
            acts = {a for r in reach for a in raw[r] if a not in raw}
            self.rules.roles[name] = frozenset(ACTIONS if ALL in acts else acts - {ALL})

    def closure(self, name: str, raw: dict[str, tuple[str, ...]], line: int) -> set[str]:
        """Every role reachable from ``name``; a cycle is an error (who would it grant what?)."""
        seen: set[str] = set()
        stack: list[tuple[str, tuple[str, ...]]] = [(name, (name,))]
        while stack:
            role, path = stack.pop()
            seen.add(role)
            for item in raw.get(role, ()):
                if item == name:
                    self.err(line, f"roles include each other in a cycle: {' -> '.join((*path, item))}")
                elif item in raw and item not in seen:
                    stack.append((item, (*path, item)))
        return seen

    def grant(self, index: int, g: Any) -> None:
        line = getattr(g, "line", 0)
        if not isinstance(g, dict):
            self.err(line, f"grant #{index} must be a mapping with who, role, hosts, vms, channels")
            return
        self.keys(g, GRANT_KEYS, f"grant #{index}")
        who = self.strings(g.get("who", []), line, f"grant #{index} who")
        for w in who:
            if not (USER_ID.match(w) or GROUP_ID.match(w) or SYSTEM_ID.match(w)):
                why = "is not a Slack user ID (U…/W…), user-group ID (S…) or bot identity (vmbot:scheduler)"
                self.err(line, f"grant #{index}: '{w}' {why}")
        role = g.get("role")
        if role not in self.rules.roles:
            hint = suggest(str(role), list(self.rules.roles))
            self.err(line, f"grant #{index}: unknown role {role!r}{hint}")
        hosts = self.strings(g.get("hosts", [ALL]), line, f"grant #{index} hosts")
        vms = self.strings(g.get("vms", [ALL]), line, f"grant #{index} vms")
        channels = self.strings(g["channels"], line, f"grant #{index} channels") if "channels" in g else None
        grant = Grant(
            index,
            line,
            who,
            str(role),
            hosts,
            vms,
            channels,
            self.rules.roles.get(str(role), frozenset()),
            self.rules.includes.get(str(role), frozenset()),
        )
        self.rules.grants.append(grant)
        self.never(grant)

    def never(self, g: Grant) -> None:
        """Warn about grants that cannot match anyone, anywhere, or grant nothing."""
        for what, items in (("who", g.who), ("hosts", g.hosts), ("vms", g.vms), ("channels", g.channels)):
            if items is not None and not items:
                self.warn(g.line, f"grant #{g.index} can never match: {what} is empty")
        if g.role in self.rules.roles and not g.actions:
            self.warn(g.line, f"grant #{g.index} grants nothing: role {g.role} has no actions")
        for c in g.channels or ():
            if not CHANNEL_ID.match(c):
                self.warn(g.line, f"grant #{g.index} can never match channel '{c}': use channel IDs like C0123ABCD")

    def rule(self, r: Any) -> None:
        line = getattr(r, "line", 0)
        if not isinstance(r, dict):
            self.err(line, "an approvals rule must be a mapping with actions, approvers, count, expires")
            return
        self.keys(r, RULE_KEYS, "an approvals rule")
        actions = self.strings(r.get("actions", []), line, "approvals actions")
        for a in actions:
            if a not in ACTIONS:
                self.err(line, f"approvals: unknown action '{a}'{suggest(a, ACTIONS)}")
        approvers = r.get("approvers")
        if approvers is not None and approvers not in self.rules.roles:
            hint = suggest(str(approvers), list(self.rules.roles))
            self.err(line, f"approvals: unknown approvers role {approvers!r}{hint}")
        count = r.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            self.err(line, f"approvals: count must be a whole number >= 0 (got {count!r})")
            count = 1
        expires = self.duration(r.get("expires", DEFAULT_EXPIRES), line)
        self.rules.approvals.append(Rule(line, frozenset(actions), approvers, count, expires))

    def duration(self, value: Any, line: int) -> int:
        m = DURATION.match(str(value).strip()) if not isinstance(value, bool) else None
        if not m or int(m.group(1)) <= 0:
            self.err(line, f"approvals: expires must be like 30m, 2h, 90s (got {value!r})")
            return DEFAULT_EXPIRES
        return int(m.group(1)) * UNITS[m.group(2)]

    def limits(self, limits: Any) -> None:
        if not isinstance(limits, dict):
            self.err(getattr(limits, "line", 1), "limits must be a mapping")
            return
        self.keys(limits, LIMIT_KEYS, "limits")
        value = limits.get("max_targets_without_approval")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            self.err(limits.line, f"limits: max_targets_without_approval must be a whole number >= 1 (got {value!r})")
            return
        self.rules.max_targets = value
