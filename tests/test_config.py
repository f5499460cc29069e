"""Config: every mistake is one ConfigError line; a real config without a policy fails closed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import ConfigError, demo, load
from bot.policy import AllowAll, DenyAll
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from handlers.cli import make_policy
from tests.conftest import Vm, audit_rows, vmbot_exe, write_fleet

GOOD = """
[hosts]
kvm01 = "qemu+ssh://vmbot@kvm01/system?no_tty=1"
lab = "qemu:///system"

[store]
path = "var/vmbot.db"

[backups]
dir = "var/backups"
keep_weekly = 4
pools = ["default"]
disk_copies = { lab = "pool" }

[policy]
file = "policy.yml"

[slack]
digest_channel = "C0123OPS"

[schedule]
timezone = "Europe/Berlin"

[terminal]
users = { alice = "U0123ALICE" }
allow_as = true

[limits]
host_timeout = 2.5
changes_per_host = 2
confirm_above = 3
"""


def write(tmp_path: Path, text: str, name: str = "vmbot.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_full_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, GOOD))
    assert cfg.hosts == {"kvm01": "qemu+ssh://vmbot@kvm01/system?no_tty=1", "lab": "qemu:///system"}
    assert cfg.store_path == str(tmp_path / "var/vmbot.db")
    assert cfg.policy_file == tmp_path / "policy.yml"
    assert cfg.backups_dir == tmp_path / "var/backups"
    assert cfg.backup_keep == {"keep_last": 1, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
    assert cfg.backup_pools == ("default",)
    assert cfg.backup_disk_copies == {"lab": "pool"}  # kvm01 is not named: its disk copies are downloaded
    assert cfg.terminal_users == {"alice": "U0123ALICE"} and cfg.allow_as is True
    assert (cfg.host_timeout, cfg.changes_per_host, cfg.confirm_above) == (2.5, 2, 3)
    assert cfg.demo is False and cfg.source == str(tmp_path / "vmbot.toml")


def test_vmbot_config_variable_is_read_when_no_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBOT_CONFIG", str(write(tmp_path, GOOD)))
    assert load(None).hosts["lab"] == "qemu:///system"


def test_no_config_is_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMBOT_CONFIG", raising=False)
    cfg = load(None)
    assert cfg.demo and sorted(cfg.hosts) == ["kvm01", "kvm02"]
    assert all(uri.startswith("test:///") and uri.endswith(".xml") for uri in cfg.hosts.values())
    assert cfg.store_path == ":memory:"


BAD = [
    ('[hosts]\nkvm01 = "qemu:///system"\n[hostz]\n', "unknown section [hostz]; did you mean hosts?"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[store]\npth = "x.db"\n', "unknown key pth in [store]; did you mean path?"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[terminal]\nallow = true\n', "unknown key allow in [terminal]"),
    ('[hosts]\nkvm01 = "http://kvm01/"\n', "is not a libvirt URI"),
    ('[hosts]\nkvm01 = "qemu+carrier-pigeon://kvm01/system"\n', "is not a libvirt URI"),
    ('[hosts]\nkvm01 = "qemu:/system"\n', "is not a libvirt URI"),
    ('[hosts]\nkvm01 = "qemu+ssh://kvm01/"\n', "should end in /system or /session"),
    ("[hosts]\nkvm01 = 3\n", "kvm01 must be a libvirt URI string"),
    ('[hosts]\n"kvm 01" = "qemu:///system"\n', "host name 'kvm 01' must be letters"),
    ("[hosts]\n", "[hosts] is empty"),
    ('store = "x"\n[hosts]\nkvm01 = "qemu:///system"\n', "store must be a table: [store]"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[limits]\nhost_timeout = "5"\n', "limits.host_timeout must be"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[limits]\nchanges_per_host = true\n', "changes_per_host must be"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[terminal]\nallow_as = "yes"\n', "terminal.allow_as must be"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[terminal]\nusers = { alice = 1 }\n', "[terminal] users must map Unix"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[policy]\nfile = "p.yml"\n[policy]\n', "not valid TOML"),
    ('[hosts\nkvm01 = "qemu:///system"\n', "not valid TOML"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\nkeep_daily = -1\n', "backups.keep_daily must be a whole number"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\nkeep_last = "3"\n', "backups.keep_last must be a whole number"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\nkeep_weekly = true\n', "backups.keep_weekly must be a whole"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\ndir = 7\n', "backups.dir must be a non-empty string"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\npools = "default"\n', "backups.pools must be a list"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\npools = ["../x"]\n', "backups.pools must be a list"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\nkeep_hourly = 3\n', "unknown key keep_hourly in [backups]"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\nstaging_pool = "a/b"\n', "backups.pools must be a list"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\ndisk_copies = "pool"\n', "backups.disk_copies must map"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\ndisk_copies = { kvm01 = "keep" }\n', 'download" or "pool'),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\ndisk_copies = { kvm01 = true }\n', "backups.disk_copies"),
    ('[hosts]\nkvm01 = "qemu:///system"\n[backups]\ndisk_copies = { "../x" = "pool" }\n', "not in [hosts]"),
]


@pytest.mark.parametrize(("text", "says"), BAD)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    message = str(e.value)
    assert says in message
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such config file$"):
        load(tmp_path / "nope.toml")


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load(tmp_path)


def run_vmbot(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [vmbot_exe(), *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


@pytest.mark.parametrize(
    "text",
    [BAD[0][0], BAD[3][0], BAD[-1][0], '[hosts]\nkvm01 = "test:///default"\n[store]\npath = "no/such/dir/a.db"\n'],
    ids=["unknown-section", "bad-uri", "bad-toml", "store-dir-missing"],
)
@pytest.mark.parametrize("verb", ["exec", "shell"])
def test_cli_with_bad_config_exits_2_with_one_stderr_line(tmp_path: Path, text: str, verb: str) -> None:
    path = write(tmp_path, text, "bad.toml")
    args = ["exec", "--config", str(path), "--", "list"] if verb == "exec" else ["shell", "--config", str(path)]
    done = run_vmbot(*args, stdin="list\n")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmbot: "), done.stderr
    assert "Traceback" not in done.stderr


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    done = run_vmbot("exec", "--config", str(tmp_path / "missing.toml"), "--", "list")
    assert done.returncode == 2
    assert done.stderr == f"vmbot: {tmp_path / 'missing.toml'}: no such config file\n"


# -- fail closed ------------------------------------------------------------


def real_config(tmp_path: Path, policy: bool = False) -> Path:
    uri = write_fleet(tmp_path / "lab.xml", [Vm("web-01", "shut off"), Vm("db-01")])
    text = f'[hosts]\nlab = "{uri}"\n[store]\npath = "audit.db"\n'
    return write(tmp_path, text + ('[policy]\nfile = "policy.yml"\n' if policy else ""), "real.toml")


def test_demo_gets_allow_all_and_a_real_config_without_policy_gets_deny_all(tmp_path: Path) -> None:
    assert not isinstance(make_policy(demo()), (AllowAll, DenyAll))  # the demo's own policy file
    policy = make_policy(load(real_config(tmp_path)))
    assert isinstance(policy, DenyAll)


def test_real_config_without_policy_refuses_everything_but_help(
    tmp_path: Path, make_bot: Callable[..., Bot], actor: Actor
) -> None:
    cfg = load(real_config(tmp_path))
    bot = make_bot(cfg, make_policy(cfg), store=cfg.store_path)
    assert bot.handle("help", actor).status is Status.OK
    for text in (
        "start web-01",
        "destroy db-01",
        "list --all",
        "state db-01",
        "hosts",
        "audit",
        "start web-01 --dry-run",
    ):
        reply = bot.handle(text, actor)
        assert reply.status is Status.REFUSED, text
        assert reply.headline == (
            f"refused: no policy file is configured ([policy] file in {cfg.source}); only help is allowed"
        )
    assert bot.life.state(bot.fleet.resolve(["web-01"]).refs[0]).name == "shut off"
    assert bot.life.state(bot.fleet.resolve(["db-01"]).refs[0]).name == "running"
    rows = audit_rows(bot)
    assert [r["decision"] for r in rows] == ["refused"] * 7
    start = rows[0]
    assert (start["action"], start["host"], start["vm_name"], start["slack_user"]) == (
        "start",
        "lab",
        "web-01",
        "U0TEST",
    )


def test_cli_fail_closed_exit_codes(tmp_path: Path) -> None:
    path = real_config(tmp_path)
    env_user = ["--as", "U0RIG"]
    (tmp_path / "real.toml").write_text(path.read_text() + "[terminal]\nallow_as = true\n")
    refused = run_vmbot("exec", "--config", str(path), *env_user, "--", "/vm start web-01")
    assert refused.returncode == 1
    assert refused.stdout.strip().startswith("refused: no policy file is configured")
    helped = run_vmbot("exec", "--config", str(path), *env_user, "--", "/vm help")
    assert helped.returncode == 0 and "/vm start" in helped.stdout


def test_hostile_a_host_name_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vmbot.toml"
    path.write_text('[hosts]\nkvm01 = "test:///default"\n"kvm02\\n" = "test:///default"\n')
    with pytest.raises(ConfigError, match="must be letters, digits"):
        load(path)
