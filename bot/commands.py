"""The one command table, and the parser that reads ``/vm ...`` text from it.

The table drives parsing, ``help``, the policy's list of actions and the
manifest's usage hint, so a new action is added in exactly one place.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class Targets(Enum):
    """How many positional arguments an action takes."""

    NONE = ""
    ONE = "VM"
    MANY = "VM..."
    OPTIONAL_VM = "[VM]"
    OPTIONAL_HOST = "[HOST]"
    OPTIONAL_ACTION = "[ACTION]"
    ID = "ID"
    RELOAD = "reload"  # `policy reload`: the one word it takes
    REPORT = "status|autostart|backups"  # `report KIND`: one of these words
    VM_HOST = "VM HOST"  # `migrate-check VM HOST`
    VM_NAME = "VM [NAME]"  # snapshot: a VM, then the new snapshot's name
    VM_SNAPSHOT = "VM SNAPSHOT"  # revert, snapshot-delete: a VM, then one of its snapshots
    SOURCE_NEW = "SOURCE NEW..."  # clone: an existing VM (or template), then names that do not exist yet
    TEMPLATE = "mark|unmark VM | create NAME"  # template: a sub-command word first

    @property
    def single_vm(self) -> bool:
        """Kinds whose VM argument must select exactly one VM."""
        return self in (Targets.ONE, Targets.VM_NAME, Targets.VM_SNAPSHOT, Targets.SOURCE_NEW, Targets.TEMPLATE)


@dataclass(frozen=True)
class Flag:
    name: str
    help: str
    value: str | None = None  # metavar when the flag takes a value
    check: Callable[[str], str | None] | None = None  # why a value is wrong, checked when the text is read

    def usage(self) -> str:
        return f"--{self.name}" + (f" {self.value}" if self.value else "")


@dataclass(frozen=True)
class Action:
    name: str
    help: str
    targets: Targets = Targets.NONE
    changes_state: bool = False
    flags: tuple[Flag, ...] = ()

    def usage(self) -> str:
        parts = [self.name, self.targets.value, *(f"[{f.usage()}]" for f in self.flags)]
        return " ".join(p for p in parts if p)


def seconds(text: str) -> str | None:
    """Whole seconds from 1 to 3600 in plain ASCII digits; refused while parsing, before anything is audited as run."""
    if text.isascii() and text.isdigit():
        return None if 1 <= int(text) <= 3600 else "must be between 1 and 3600 seconds"
    return f"wants whole seconds in digits, like --timeout 30 (got {text[:20]!r})"


def version(text: str) -> str | None:
    """A template version: plain ASCII digits, 1 to 9999."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 10000:
        return f"wants a version number like --version 3 (got {text!r})"
    return None


def description(text: str) -> str | None:
    """A snapshot's description: one printable line, short enough for a chat message."""
    if len(text) > 500:
        return "is longer than 500 characters"
    return None if text.isprintable() else "must be one printable line (no newlines or control characters)"


REASON = Flag("reason", "why (shown to approvers and in the audit)", "TEXT")
DRY_RUN = Flag("dry-run", "show what would happen, change nothing")
PUBLIC = Flag("public", "post the answer in the channel")
YES = Flag("yes", "confirm a command that selects many VMs")
CHANGE_FLAGS = (REASON, DRY_RUN, YES)


def _change(name: str, help: str, targets: Targets = Targets.MANY, *flags: Flag) -> Action:
    return Action(name, help, targets, True, (*flags, *CHANGE_FLAGS))


def _read(name: str, help: str, targets: Targets = Targets.NONE, *flags: Flag) -> Action:
    return Action(name, help, targets, False, (*flags, PUBLIC))


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        _read("help", "show this help, or help for one action", Targets.OPTIONAL_ACTION),
        _read(
            "list",
            "list VMs by host",
            Targets.NONE,
            Flag("all", "include shut-off VMs"),
            Flag("autostart", "only VMs that start with their host"),
            Flag("host", "only this host", "HOST"),
            Flag("state", "only VMs in this state (running, paused, shut off, crashed)", "STATE"),
        ),
        _read("state", "the VM's state and its reason", Targets.ONE),
        _read("info", "what virsh dominfo shows", Targets.ONE),
        _read("ip", "the VM's addresses (domifaddr)", Targets.ONE),
        _read("dumpxml", "the VM's libvirt XML", Targets.ONE),
        Action("screenshot", "a picture of the VM's display, shown only to you (no --public)", Targets.ONE),
        _read("hosts", "configured hosts and whether they answer"),
        _read("audit", "latest audit rows, for one VM or all", Targets.OPTIONAL_VM),
        _change(
            "start",
            "boot a shut-off VM",
            Targets.MANY,
            Flag("force-boot", "discard a managed-save image"),
            Flag("console", "show the boot log up to the guest's ready line"),
        ),
        _change("suspend", "pause a running VM", Targets.MANY),
        _change("resume", "unpause a paused VM", Targets.MANY),
        _change("managedsave", "save the VM's memory to disk and stop it", Targets.MANY),
        _change("reboot", "ask the guest to reboot (ACPI)", Targets.MANY),
        _change("reset", "hard reset, like pressing the reset button", Targets.MANY),
        _change(
            "shutdown",
            "ask the guest to power off (ACPI); never escalates",
            Targets.MANY,
            Flag("timeout", "wait up to S seconds for the VM to stop", "S", seconds),
        ),
        _change("destroy", "immediate power-off: unsaved guest data is lost", Targets.MANY),
        _change(
            "undefine",
            "remove a shut-off VM's definition",
            Targets.ONE,
            Flag("remove-storage", "also delete its disk volumes"),
        ),
        _change(
            "autostart",
            "start the VM with its host",
            Targets.MANY,
            Flag("disable", "stop starting it with its host"),
        ),
        _change(
            "snapshot",
            "internal snapshot of a VM with qcow2 disks (not a writable raw disk, not UEFI/pflash); "
            "a running VM pauses while its memory is saved",
            Targets.VM_NAME,
            Flag("description", "a note kept with the snapshot", "TEXT", description),
        ),
        _read("snapshots", "a VM's snapshots with time, state and description", Targets.ONE),
        _change(
            "revert",
            "go back to a snapshot: everything since it is lost (waits for approval); external snapshots cannot be "
            "reverted",
            Targets.VM_SNAPSHOT,
        ),
        _change("snapshot-delete", "delete one snapshot (waits for approval)", Targets.VM_SNAPSHOT),
        _change(
            "clone",
            "copy a shut-off VM or a template into new VMs on its host (new names, UUIDs, MACs and disks)",
            Targets.SOURCE_NEW,
            Flag("linked", "qcow2 overlays on the template's disks instead of copies (templates only)"),
            Flag("version", "clone this version of the template (default: the newest)", "N", version),
            Flag("start", "start each clone once it is made"),
        ),
        _change(
            "template",
            "mark a shut-off VM as a template (its disks become read-only, it never starts), unmark it, or "
            "create a new version of template NAME from a copy of a shut-off VM",
            Targets.TEMPLATE,
            Flag("from", "the VM to copy (template create)", "VM"),
        ),
        _read("templates", "templates with their versions, size, source VM and date"),
        _change(
            "backup",
            "config backup of each VM: its inactive XML, autostart flag and vmbot's facts",
            Targets.MANY,
            Flag("all", "every VM on every host (instead of naming VMs)"),
            Flag("disk", "also copy its disks (live through libvirt's backup job if it runs)"),
        ),
        _read("backups", "the backup catalog, newest first", Targets.OPTIONAL_VM),
        Action(
            "verify",
            "re-hash backup files against the catalog; a mismatch marks the backup bad",
            Targets.OPTIONAL_VM,
            False,
            (
                Flag("from", "only this backup", "ID"),
                Flag("boot", "also boot a scratch copy with no network, then remove it (disk backups)"),
                REASON,
            ),
        ),
        _change(
            "restore",
            "define a VM again from a backup (not virsh's restore of a saved-memory file); never over a VM",
            Targets.ONE,
            Flag("from", "this backup instead of the newest good one", "ID"),
            Flag("as", "restore a copy: new name, UUID, MACs, NVRAM/TPM and volumes", "NEW"),
        ),
        _change("prune", "apply backup retention now (it also runs after each backup)", Targets.NONE),
        _read("approvals", "requests waiting for approval"),
        Action("approve", "approve a waiting request (never your own)", Targets.ID),
        Action("deny", "deny a waiting request, or withdraw your own", Targets.ID, False, (REASON,)),
        Action("freeze", "read-only mode for the fleet or one host (admin)", Targets.OPTIONAL_HOST, False, (REASON,)),
        Action("thaw", "lift the freeze of one host, or every freeze (admin)", Targets.OPTIONAL_HOST),
        Action("policy", "re-read the policy file and user groups (admin)", Targets.RELOAD),
        _read("report", "run a report now: the status digest, autostart or backup health", Targets.REPORT),
        _read("schedule", "scheduled jobs: cron, time zone, last run (result, duration), next run"),
        _read("migrate-check", "can VM move to HOST? each check pass, warn or fail with its reason", Targets.VM_HOST),
    )
}


class UsageError(Exception):
    """The text is not a command the table knows; the message says what would be."""


@dataclass
class Command:
    action: Action
    targets: list[str] = field(default_factory=list)
    flags: dict[str, str | bool] = field(default_factory=dict)
    text: str = ""

    def flag(self, name: str) -> str | bool | None:
        return self.flags.get(name)

    def vm_args(self) -> list[str]:
        """The arguments that name existing VMs; the rest are snapshot names or VMs still to be made."""
        kind = self.action.targets
        if kind in (Targets.VM_NAME, Targets.VM_SNAPSHOT, Targets.SOURCE_NEW):
            return self.targets[:1]
        if kind is Targets.TEMPLATE:
            return [str(self.flags["from"])] if self.targets[0] == "create" else self.targets[1:]
        return list(self.targets)

    def new_names(self) -> list[str]:
        """Names of VMs the command makes (clone NEW..., template create NAME): the policy's "new" targets."""
        if self.action.targets is Targets.SOURCE_NEW:
            return self.targets[1:]
        if self.action.targets is Targets.TEMPLATE and self.targets[0] == "create":
            return self.targets[1:]
        return []


def suggest(word: str, choices: list[str] | tuple[str, ...] | dict) -> str:
    """A "did you mean" tail for an error line, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def parse(text: str) -> Command:
    """Split slash-command text into an action, targets and flags, or raise UsageError."""
    try:
        words = shlex.split(text.strip())
    except ValueError as e:
        raise UsageError(f"cannot read the command: {e} (close your quotes)") from None
    if words and words[0] == "/vm":
        words = words[1:]
    if not words:
        return Command(ACTIONS["help"], text=text)
    name, rest = words[0].lower(), words[1:]
    action = ACTIONS.get(name)
    if action is None:
        raise UsageError(f"unknown action '{name}'{suggest(name, ACTIONS)} (try help)")
    command = Command(action, text=text)
    _read_args(command, rest)
    _check_arity(command)
    return command


def _read_args(command: Command, words: list[str]) -> None:
    known = {f.name: f for f in command.action.flags}
    it = iter(words)
    for word in it:
        if word == "--":
            command.targets.extend(it)
            return
        if not word.startswith("--") or word == "--":
            command.targets.append(word)
            continue
        name, eq, inline = word[2:].partition("=")
        flag = known.get(name)
        if flag is None:
            raise UsageError(
                f"{command.action.name} has no flag --{name}{suggest(name, known)} (usage: {command.action.usage()})"
            )
        if name in command.flags or (flag.value is None and eq):
            twice = f"--{name} is given twice; give it once (usage: {command.action.usage()})"
            raise UsageError(twice if name in command.flags else f"--{name} takes no value: write --{name} alone")
        if flag.value is None:
            command.flags[name] = True
            continue
        value = inline if eq else next(it, None)
        if value is None or value == "":
            raise UsageError(f"--{name} needs a value ({flag.usage()})")
        if flag.check and (why := flag.check(value)):
            raise UsageError(f"--{name} {why}")
        command.flags[name] = value


def _check_arity(command: Command) -> None:
    kind, n, usage = command.action.targets, len(command.targets), command.action.usage()
    if kind is Targets.RELOAD and command.targets != ["reload"]:
        raise UsageError(f"{command.action.name} takes one word: reload (usage: {usage})")
    if kind is Targets.REPORT and (n != 1 or command.targets[0] not in kind.value.split("|")):
        got = f" (got '{command.targets[0]}')" if n == 1 else ""
        raise UsageError(f"{command.action.name} takes one of {kind.value.replace('|', ', ')}{got} (usage: {usage})")
    if kind is Targets.VM_HOST and n != 2:
        raise UsageError(f"{command.action.name} takes a VM and a host (usage: {usage})")
    if kind in (Targets.ONE, Targets.ID) and n != 1:
        raise UsageError(f"{command.action.name} takes exactly one {kind.value} (usage: {usage})")
    if kind is Targets.MANY and command.flags.get("all") and n:
        raise UsageError(f"{command.action.name} takes VMs or --all, not both (usage: {usage})")
    if kind is Targets.MANY and n == 0 and not command.flags.get("all"):
        raise UsageError(f"{command.action.name} needs at least one VM (usage: {usage})")
    if kind in (Targets.OPTIONAL_VM, Targets.OPTIONAL_HOST, Targets.OPTIONAL_ACTION) and n > 1:
        raise UsageError(f"{command.action.name} takes at most one argument (usage: {usage})")
    if kind is Targets.NONE and n:
        raise UsageError(f"{command.action.name} takes no VM (usage: {usage})")
    if kind is Targets.VM_NAME and n not in (1, 2):
        raise UsageError(f"{command.action.name} takes a VM and an optional name (usage: {usage})")
    if kind is Targets.VM_SNAPSHOT and n != 2:
        raise UsageError(f"{command.action.name} takes a VM and a snapshot name (usage: {usage})")
    if kind is Targets.SOURCE_NEW and n < 2:
        raise UsageError(f"{command.action.name} takes a source VM and at least one new name (usage: {usage})")
    if kind is Targets.TEMPLATE:
        _check_template(command, usage)
    for name in command.new_names():
        if why := new_name_problem(name):
            raise UsageError(f"new VM name {name!r}: {why}")
    if kind in (Targets.VM_NAME, Targets.VM_SNAPSHOT) and n == 2 and (why := snapshot_name_problem(command.targets[1])):
        raise UsageError(f"snapshot name {command.targets[1]!r}: {why}")


def _check_template(command: Command, usage: str) -> None:
    words, has_from = command.targets, "from" in command.flags
    sub = words[0] if words else ""
    if sub in ("mark", "unmark") and len(words) == 2 and not has_from:
        return
    if sub == "create" and len(words) == 2 and has_from:
        return
    if sub == "create":
        raise UsageError(f"template create takes one NAME and --from VM (usage: {usage})")
    if sub in ("mark", "unmark"):
        raise UsageError(f"template {sub} takes exactly one VM and no --from (usage: {usage})")
    raise UsageError(f"template takes mark, unmark or create first (usage: {usage})")


def _plain(name: str) -> str | None:
    if not name or name.strip() != name:
        return "must not be empty or start or end with a space"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not contain control characters (newlines, tabs)"
    if "/" in name:
        return "must not contain '/' (clones are made on the source's host)"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    return None


def new_name_problem(name: str) -> str | None:
    """Why a name cannot be given to a new VM, or None. libvirt takes nearly anything; chat and paths can't."""
    if len(name) > 100:
        return "is longer than 100 characters"
    return _plain(name)


def snapshot_name_problem(name: str) -> str | None:
    """Why a snapshot name is refused, or None: QEMU keeps it in the qcow2 image, so keep it plain."""
    if len(name) > 64:
        return "is longer than 64 characters"
    return _plain(name) or (None if name.isprintable() else "must be printable")


def help_text(name: str | None = None) -> list[str]:
    """Help lines from the table: one per action, or the flags of one action."""
    if name:
        action = ACTIONS.get(name)
        if action is None:
            raise UsageError(f"unknown action '{name}'{suggest(name, ACTIONS)}")
        return [f"/vm {action.usage()}", action.help] + [f"  {f.usage()}: {f.help}" for f in action.flags]
    lines = [f"/vm {a.usage()}: {a.help}" for a in ACTIONS.values()]
    return [*lines, "A VM is name or host/name; quote names with spaces; globs like web-* select several."]


def usage_hint() -> str:
    """The short usage hint for Slack's slash-command manifest."""
    return "[" + "|".join(ACTIONS) + "] VM [--flags]"
