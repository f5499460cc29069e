"""The one command table: parsing, help, suggestions, and that every action in it is wired up."""

from __future__ import annotations

import pytest

from bot.backup import CATALOG_ACTIONS
from bot.clone import snapshots
from bot.commands import ACTIONS, Targets, UsageError, help_text, parse, usage_hint
from bot.hypervisor.lifecycle import OPS
from bot.hypervisor.states import RULES
from bot.reply import Status
from bot.service import READS, Bot
from bot.store.audit import Actor


def test_plain_command_with_prefix_and_flags() -> None:
    cmd = parse("/vm shutdown web-01 web-02 --timeout 30 --reason 'patch night'")
    assert cmd.action.name == "shutdown"
    assert cmd.targets == ["web-01", "web-02"]
    assert cmd.flags == {"timeout": "30", "reason": "patch night"}


def test_inline_flag_value_and_boolean_flags() -> None:
    cmd = parse("shutdown db --timeout=5 --dry-run --yes")
    assert cmd.flag("timeout") == "5"
    assert cmd.flag("dry-run") is True and cmd.flag("yes") is True
    assert cmd.flag("reason") is None


def test_quoted_names_keep_spaces_and_odd_characters() -> None:
    cmd = parse("start \"a b\" '<!channel>' 'web;rm' '*' ..")
    assert cmd.targets == ["a b", "<!channel>", "web;rm", "*", ".."]


def test_double_dash_ends_flags() -> None:
    cmd = parse("start -- --weird-name")
    assert cmd.targets == ["--weird-name"]
    assert cmd.flags == {}


def test_action_is_case_insensitive_and_empty_text_is_help() -> None:
    assert parse("START web").action.name == "start"
    assert parse("").action.name == "help"
    assert parse("/vm").action.name == "help"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("strat web-01", "unknown action 'strat'; did you mean state, start?"),
        ("shutdwn web-01", "did you mean shutdown"),
        ("frobnicate", "unknown action 'frobnicate' (try help)"),
        ("start web-01 --forceboot", "start has no flag --forceboot; did you mean force-boot?"),
        ("list --al", "did you mean all?"),
        ("shutdown web-01 --timeout", "--timeout needs a value"),
        ("shutdown web-01 --timeout=", "--timeout needs a value"),
        ("state", "state takes exactly one VM"),
        ("state a b", "state takes exactly one VM"),
        ("start", "start needs at least one VM"),
        ("list web-01", "list takes no VM"),
        ("audit a b", "audit takes at most one argument"),
        ("undefine a b", "undefine takes exactly one VM"),
        ("start 'web-01", "cannot read the command"),
        ("list --yes", "list has no flag --yes"),
    ],
)
def test_usage_errors_are_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(text)
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_help_lists_every_action_from_the_table() -> None:
    lines = help_text()
    for name, action in ACTIONS.items():
        assert any(line.startswith(f"/vm {name}") and action.help in line for line in lines), name
    assert "quote names with spaces" in lines[-1]


def test_help_for_one_action_lists_its_flags() -> None:
    lines = help_text("shutdown")
    assert lines[0] == "/vm shutdown VM... [--timeout S] [--reason TEXT] [--dry-run] [--yes]"
    assert any("--timeout S" in line for line in lines[2:])
    with pytest.raises(UsageError, match="did you mean start"):
        help_text("strt")


def test_usage_hint_and_help_read_as_written_here() -> None:
    """Checked against text written by hand, not against the table the hint is built from."""
    hint = usage_hint()
    assert hint.startswith("[help|list|state|info|ip|dumpxml|") and hint.endswith("] VM [--flags]")
    words = hint[1 : hint.index("]")].split("|")
    assert len(words) == len(set(words)) and len(hint) <= 1000  # Slack cuts a longer usage hint
    expected = {"start", "shutdown", "destroy", "reboot", "reset", "suspend", "resume", "approve", "deny", "freeze"}
    assert expected <= set(words) and "vm" not in words and "" not in words
    assert help_text("shutdown")[:3] == [
        "/vm shutdown VM... [--timeout S] [--reason TEXT] [--dry-run] [--yes]",
        "ask the guest to power off (ACPI); never escalates",
        "  --timeout S: wait up to S seconds for the VM to stop",
    ]
    assert "/vm destroy VM... [--reason TEXT] [--dry-run] [--yes]: immediate power-off: unsaved guest data is lost" in (
        help_text()
    )


def test_every_state_change_has_an_operation_and_a_rule_or_is_always_allowed() -> None:
    """The table, OPS and RULES must not drift: an action in the table that nothing runs is a bug."""
    changes = {n for n, a in ACTIONS.items() if a.changes_state}
    backups = {"backup"} | set(CATALOG_ACTIONS)  # run by bot.backup, not by the lifecycle
    made = {"clone", "template"}  # they make VMs: bot.clone
    assert changes - backups == set(OPS) | set(snapshots.OPS) | made
    assert changes - {"autostart", *snapshots.OPS} - backups <= set(RULES)  # snapshots apply in any state
    assert backups <= changes
    reads_on_one = {n for n, a in ACTIONS.items() if a.targets is Targets.ONE and not a.changes_state}
    assert reads_on_one <= set(READS)


def test_bot_answers_usage_errors_with_status_usage(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("strt centos7", actor)
    assert reply.status is Status.USAGE and reply.status.exit_code == 2
    assert reply.text().startswith("unknown action 'strt'; did you mean start")


def test_bot_help_from_the_table(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("help", actor)
    assert reply.status is Status.OK
    assert len(reply.lines) == len(ACTIONS) + 1
    one = demo_bot.handle("help undefine", actor)
    assert "--remove-storage" in one.text()


def test_help_about_an_unknown_action_is_a_usage_error(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("help frobnicate", actor)
    assert (reply.status, reply.headline) == (Status.USAGE, "unknown action 'frobnicate'")
    assert reply.error_id is None  # a usage error, not an internal one
    assert demo_bot.handle("help destory", actor).headline == "unknown action 'destory'; did you mean destroy, restore?"


# -- hostile review ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["start web-* --yes=no", "report status --public=no", "destroy web-01 --dry-run=no"])
def test_hostile_a_boolean_flag_with_a_value_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse(text)


@pytest.mark.parametrize("text", ["report status --public --public", "shutdown web-01 --timeout 5 --timeout 3600"])
def test_hostile_a_flag_given_twice_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "destroy web-01 --yes=no",
        "list --all=false",
        "destroy web-01 --yes=",
        "destroy web-01 --dry-run=yes",
    ],
)
def test_a_boolean_flag_given_a_value_is_a_usage_error(demo_bot: Bot, actor: Actor, text: str) -> None:
    with pytest.raises(UsageError, match="takes no value"):
        parse(text)
    assert demo_bot.handle(text, actor).status is Status.USAGE


@pytest.mark.parametrize(
    "text",
    [
        "destroy web-01 --yes --yes",
        "shutdown web-01 --timeout 5 --timeout 600",
        "shutdown web-01 --reason a --reason=b",
        "list --all --all",
    ],
)
def test_a_flag_given_twice_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse(text)


@pytest.mark.parametrize("value", ["0.0001", "1_0", "١٠", "0", "3601", "1e3", "+5", " 5", "nan", "inf", "-1"])
def test_timeout_is_plain_ascii_digits_from_1_to_3600(value: str) -> None:
    with pytest.raises(UsageError, match="--timeout"):
        parse(f"shutdown web-01 --timeout={value}")


@pytest.mark.parametrize("value", ["1", "30", "3600"])
def test_timeout_in_range_is_read(value: str) -> None:
    assert parse(f"shutdown web-01 --timeout {value}").flag("timeout") == value
