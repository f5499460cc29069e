"""The terminal adapter: identity rules, /as, and the real ``vmbot`` CLI driven as a subprocess."""

from __future__ import annotations

import getpass
import io
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import Config, demo, load
from bot.policy import DenyAll
from bot.service import Bot
from bot.store.audit import Actor
from handlers.cli import make_policy
from handlers.terminal.identity import DEMO_USER, IdentityError, terminal_user
from handlers.terminal.shell import shell
from tests.conftest import Vm, audit_rows, vmbot_exe, write_fleet

ME = getpass.getuser()


def real(users: dict[str, str] | None = None, allow_as: bool = False) -> Config:
    return Config(hosts={"lab": "test:///default"}, terminal_users=users or {}, allow_as=allow_as, source="t.toml")


# -- identity rules ---------------------------------------------------------


def test_demo_acts_as_anyone() -> None:
    assert terminal_user(demo(), None) == DEMO_USER
    assert terminal_user(demo(), "U0ALICE") == "U0ALICE"


def test_a_requested_id_must_look_like_a_slack_id() -> None:
    for bad in ("alice", "u0alice", "C0CHANNEL", "U0<!here>"):
        with pytest.raises(IdentityError, match="is not a Slack user ID"):
            terminal_user(demo(), bad)


def test_real_config_maps_the_unix_user() -> None:
    assert terminal_user(real({ME: "U0ME"}), None) == "U0ME"


def test_real_config_without_a_mapping_refuses() -> None:
    with pytest.raises(IdentityError, match=f"Unix user '{ME}' has no Slack ID in \\[terminal\\] users of t.toml"):
        terminal_user(real({"someone-else": "U0ELSE"}), None)
    with pytest.raises(IdentityError, match="which is not a Slack user ID"):
        terminal_user(real({ME: "alice"}), None)


def test_as_is_refused_unless_allow_as() -> None:
    with pytest.raises(
        IdentityError, match=r"acting as U0OTHER is refused: \[terminal\] allow_as is not set in t.toml"
    ):
        terminal_user(real({ME: "U0ME"}), "U0OTHER")
    assert terminal_user(real({ME: "U0ME"}, allow_as=True), "U0OTHER") == "U0OTHER"


# -- the shell in process -----------------------------------------------------


def run_shell(bot: Bot, user: str, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = shell(bot, user, io.StringIO(text))
    return code, capsys.readouterr().out


def test_shell_as_switches_user_on_the_demo(demo_bot: Bot, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_shell(demo_bot, DEMO_USER, "state centos7\n/as U0BOB\nstart centos7\n/as bob\n/as\n", capsys)
    assert "now acting as U0BOB" in out
    assert "'bob' is not a Slack user ID" in out and "usage: /as USER_ID" in out
    assert code == 2
    rows = audit_rows(demo_bot)
    assert [(r["action"], r["slack_user"], r["unix_user"]) for r in rows] == [
        ("state", DEMO_USER, ME),
        ("start", "U0BOB", ME),
        ("as", "U0BOB", ME),  # the refused '/as bob'
    ]


def test_shell_as_follows_the_config_rules(
    make_bot: Callable[..., Bot], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = write_fleet(tmp_path / "lab.xml", [Vm("web-01", "shut off")])
    config = Config(hosts={"lab": uri}, terminal_users={ME: "U0ME"}, source="t.toml")
    bot = make_bot(config, DenyAll("no policy file"))
    code, out = run_shell(bot, terminal_user(config, None), "/as U0BOSS\nstart web-01\n", capsys)
    assert "acting as U0BOSS is refused: [terminal] allow_as is not set in t.toml" in out
    assert "refused: no policy file" in out and code == 1
    tried, row = audit_rows(bot)
    assert (tried["slack_user"], tried["action"], tried["text"]) == ("U0ME", "as", "/as U0BOSS")  # audited too
    assert (row["slack_user"], row["unix_user"], row["vm_name"], row["decision"]) == ("U0ME", ME, "web-01", "refused")
    config.allow_as = True
    code, out = run_shell(bot, "U0ME", "/as U0RIG\nstart web-01\n", capsys)
    assert "now acting as U0RIG" in out
    assert audit_rows(bot)[-1]["slack_user"] == "U0RIG"


# -- the real CLI -------------------------------------------------------------


def vmbot(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([vmbot_exe(), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


SEQUENCE = [
    ("list --all", "7 VMs on 2 host(s)"),
    ("state centos7", "centos7 on kvm01: shut off"),
    ("info centos7", "centos7 on kvm01"),
    ("start centos7", "kvm01/centos7: started"),
    ("suspend centos7", "kvm01/centos7: paused"),
    ("resume centos7", "kvm01/centos7: resumed"),
    ("reboot centos7", "kvm01/centos7: reboot requested"),
    ("reset centos7", "waiting for approval: request "),  # the demo policy: the second demo user approves
    ("shutdown centos7 --timeout 30", "kvm01/centos7: shut off after "),
    ("start centos7", "kvm01/centos7: started"),
    ("destroy centos7", "waiting for approval: request "),
    ("shutdown centos7 --timeout 30", "kvm01/centos7: shut off after "),
    ("autostart centos7", "kvm01/centos7: autostart enabled"),
    ("list --autostart", "1 VM on 2 host(s)"),
    ("autostart centos7 --disable", "kvm01/centos7: autostart disabled"),
    ("resume centos7", "kvm01/centos7: centos7 is shut off; resume applies to a paused VM"),
    ("suspend web-server", "kvm01/web-server: web-server is paused; suspend applies to a running VM"),
    ("start ubuntu20", "kvm01/ubuntu20: ubuntu20 is running; start applies to a shut-off VM"),
    ("start centos8", "no VM named 'centos8'; did you mean centos7"),
    ("start db-server", "'db-server' is on 2 hosts: kvm01/db-server, kvm02/db-server; name one as host/name"),
]


def answers(stdout: str) -> list[tuple[str, str]]:
    """Split piped-shell output into (command, reply) pairs at each echoed prompt."""
    pairs: list[tuple[str, str]] = []
    for chunk in stdout.split("vmbot> ")[1:]:
        command, _, reply = chunk.partition("\n")
        pairs.append((command, reply.rstrip("\n")))
    return pairs


def test_the_issue_sequence_through_vmbot_shell() -> None:
    text = "\n".join(c for c, _ in SEQUENCE) + "\naudit centos7\naudit\n"
    done = vmbot("shell", stdin=text)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("vmbot shell on the embedded demo fleet (kvm01, kvm02")
    assert "lost when you exit" in done.stdout
    got = answers(done.stdout)
    assert [c for c, _ in got] == [c for c, _ in SEQUENCE] + ["audit centos7", "audit"]
    for (command, reply), (_, expected) in zip(got, SEQUENCE, strict=False):
        assert reply.startswith(expected), (command, reply)
    autostart_listing = got[13][1]
    assert "centos7" in autostart_listing and "autostart" in autostart_listing.splitlines()[2]
    centos_audit = got[-2][1].splitlines()
    assert centos_audit[0] == "latest 14 audit row(s) for centos7"
    actions = [line.split(f"U0DEMO ({getpass.getuser()}) ", 1)[1].split()[0] for line in centos_audit[1:]]
    assert actions[::-1] == [
        "state", "info", "start", "suspend", "resume", "reboot", "reset", "shutdown",
        "start", "destroy", "shutdown", "autostart", "autostart", "resume",
    ]  # fmt: skip
    assert sum("→ waiting for approval" in line for line in centos_audit) == 2  # reset and destroy
    assert "→ refused: centos7 is shut off; resume applies to a paused VM" in centos_audit[1]
    recent = got[-1][1]
    assert "start  → refused: 'db-server' is on 2 hosts" in recent
    assert "start  → refused: no VM named 'centos8'" in recent
    assert "suspend kvm01/web-server → refused" in recent
    assert "list  → ok: 1 VM on 2 host(s)" in recent


def test_the_issue_sequence_in_process_leaves_every_row(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(demo(), policy=make_policy(demo()))
    actor = Actor(user="U0DEMO", unix_user="tester")
    for command, expected in SEQUENCE:
        assert bot.handle(command, actor).text().startswith(expected), command
    rows = audit_rows(bot)
    assert [r["text"] for r in rows] == [c for c, _ in SEQUENCE]
    assert all(r["slack_user"] == "U0DEMO" and r["unix_user"] == "tester" for r in rows)
    assert [r["text"] for r in rows if not r["ended_at"]] == ["reset centos7", "destroy centos7"]  # waiting
    assert [r["result"] for r in rows][-5:] == ["refused"] * 5


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["--", "/vm state centos7"], 0),
        (["--", "/vm", "start", "centos7"], 0),
        (["--", "resume ubuntu20"], 1),
        (["--", "start", "centos 7"], 1),
        (["--", "/vm strt centos7"], 2),
        (["--", "/vm shutdown ubuntu20 --timeout"], 2),
        (["--"], 2),
    ],
)
def test_exec_exit_codes(command: list[str], code: int) -> None:
    done = vmbot("exec", "--as", "U0BOB", *command)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr


def test_exec_keeps_a_quoted_name_one_word() -> None:
    done = vmbot("exec", "--", "state", "centos 7")
    assert done.stdout.strip() == "no VM named 'centos 7'; did you mean centos7?"


def write_config(tmp_path: Path, users: dict[str, str], allow_as: bool = False) -> Path:
    uri = write_fleet(tmp_path / "lab.xml", [Vm("web-01", "shut off")])
    user_table = ", ".join(f'"{k}" = "{v}"' for k, v in users.items())
    path = tmp_path / "vmbot.toml"
    path.write_text(
        f'[hosts]\nlab = "{uri}"\n[store]\npath = "audit.db"\n'
        f"[terminal]\nusers = {{ {user_table} }}\nallow_as = {'true' if allow_as else 'false'}\n"
    )
    return path


def rows_in(path: Path) -> list[dict]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from operations order by id")]


def test_real_config_cli_maps_the_unix_user_and_refuses_as(tmp_path: Path) -> None:
    config = write_config(tmp_path, {ME: "U0ME"})
    assert load(config).allow_as is False
    refused = vmbot("exec", "--config", str(config), "--", "/vm start web-01")
    assert refused.returncode == 1 and refused.stdout.startswith("refused: no policy file is configured")
    assert vmbot("exec", "--config", str(config), "--", "/vm help").returncode == 0
    as_other = vmbot("exec", "--config", str(config), "--as", "U0OTHER", "--", "/vm help")
    assert as_other.returncode == 2 and as_other.stdout == ""
    assert as_other.stderr == f"vmbot: acting as U0OTHER is refused: [terminal] allow_as is not set in {config}\n"
    shell_as = vmbot("shell", "--config", str(config), stdin="/as U0OTHER\nstate web-01\n")
    assert "acting as U0OTHER is refused" in shell_as.stdout and shell_as.returncode == 1
    rows = rows_in(tmp_path / "audit.db")
    assert [(r["action"], r["slack_user"], r["unix_user"], r["decision"]) for r in rows] == [
        ("start", "U0ME", ME, "refused"),
        ("as", "U0ME", ME, "refused"),  # exec --as U0OTHER
        ("as", "U0ME", ME, "refused"),  # /as U0OTHER in the shell
        ("state", "U0ME", ME, "refused"),
    ]
    assert rows[0]["vm_name"] == "web-01" and rows[0]["host"] == "lab"


def test_real_config_cli_with_allow_as_records_both_identities(tmp_path: Path) -> None:
    config = write_config(tmp_path, {}, allow_as=True)
    done = vmbot("exec", "--config", str(config), "--as", "U0RIG", "--", "/vm destroy web-01")
    assert done.returncode == 1
    (row,) = rows_in(tmp_path / "audit.db")
    assert (row["slack_user"], row["unix_user"], row["source"]) == ("U0RIG", ME, "terminal")


def test_real_config_cli_unmapped_user_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"nobody-here": "U0NOBODY"})
    done = vmbot("shell", "--config", str(config), stdin="list\n")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"vmbot: Unix user '{ME}' has no Slack ID in [terminal] users of {config}\n"


def test_a_screenshot_is_saved_to_a_private_file_no_vm_named() -> None:
    done = vmbot("exec", "--", '/vm screenshot "ubuntu20"')
    assert done.returncode == 0, done.stdout + done.stderr
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("saved to "))
    try:
        assert path.name.startswith("vmbot-") and "ubuntu20" not in path.name
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        path.unlink()


def test_a_bidi_override_or_escape_in_a_name_is_shown_not_obeyed_in_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.reportrig import bot_on, write_host

    name = "db-01 \u202edetratser\x9b2J"  # reverses what follows; C1 CSI clears the screen in some terminals
    bot = bot_on({"kvm01": write_host(tmp_path / "kvm01.xml", [Vm(name, "paused")], pool_path="/p1")}, ":memory:")
    try:
        code, out = run_shell(bot, DEMO_USER, "list --all\nreport status\n", capsys)
    finally:
        bot.close()
    assert code == 0 and "\u202e" not in out and "\x9b" not in out
    assert out.count("db-01 \\u202edetratser\\x9b2J") >= 2  # the list and the report both name it, visibly
