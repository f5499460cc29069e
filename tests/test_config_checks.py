"""Defects 5 and 6: every config key is type- and range-checked (one line naming the key, exit 2),
and `list` exits non-zero when no host answered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import ConfigError, load
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm
from tests.test_config import run_vmbot, write

HOSTS = '[hosts]\nlab = "test:///default"\n'
BAD = [
    ("[store]\npath = 5", "store.path"),
    ("[store]\npath = ''", "store.path"),
    ("[policy]\nfile = 5", "policy.file"),
    ("[policy]\nfile = ['a']", "policy.file"),
    ("[backups]\ndir = 5", "backups.dir"),
    ("[backups]\nkeep_daily = -1", "backups.keep_daily"),
    ("[backups]\nkeep_weekly = 'x'", "backups.keep_weekly"),
    ("[slack]\ndigest_channel = 5", "slack.digest_channel"),
    ("[slack]\napprovals_channel = 'not a channel'", "slack.approvals_channel"),
    ("[schedule]\ntimezone = 5", "timezone"),
    ("[terminal]\nallow_as = 'yes'", "terminal.allow_as"),
    ("[limits]\nchanges_per_host = -3", "limits.changes_per_host"),
    ("[limits]\nchanges_per_host = 0", "limits.changes_per_host"),
    ("[limits]\nchanges_per_host = 1.5", "limits.changes_per_host"),
    ("[limits]\nhost_timeout = 0", "limits.host_timeout"),
    ("[limits]\nhost_timeout = -1", "limits.host_timeout"),
    ("[limits]\nhost_timeout = nan", "limits.host_timeout"),
    ("[limits]\nhost_timeout = inf", "limits.host_timeout"),
    ("[limits]\nprobe_interval = 0", "limits.probe_interval"),
    ("[limits]\nprobe_interval = inf", "limits.probe_interval"),
    ("[limits]\nconfirm_above = -1", "limits.confirm_above"),
    ("[limits]\nconfirm_above = true", "limits.confirm_above"),
    ("[limits]\nopen_hosts = 0", "limits.open_hosts"),
    ("[limits]\nopen_hosts = -1", "limits.open_hosts"),
    ("[limits]\nopen_hosts = 'x'", "limits.open_hosts"),
    ("[limits]\nopen_hosts = 1e9", "limits.open_hosts"),
    ("[limits]\nopen_hosts = 1000000000", "limits.open_hosts"),
    ("[limits]\nopen_hosts = true", "limits.open_hosts"),
    ("[limits]\nopen_hosts = 2.5", "limits.open_hosts"),
]


@pytest.mark.parametrize("text, key", BAD, ids=[k + "=" + t.split("= ")[-1] for t, k in BAD])
def test_a_wrong_type_or_range_is_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write(tmp_path, HOSTS + text))


@pytest.mark.parametrize("text, key", [BAD[0], BAD[2], BAD[11], BAD[16]])
@pytest.mark.parametrize("verb", ["exec", "explain"])
def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path: Path, text: str, key: str, verb: str) -> None:
    path = write(tmp_path, HOSTS + text)
    if verb == "exec":
        done = run_vmbot("exec", "--config", str(path), "--", "list")
    else:
        done = run_vmbot("policy", "explain", "--config", str(path), "--as", "U1", "--", "/vm list")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_sane_limits_still_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, HOSTS + "[limits]\nhost_timeout = 0.5\nchanges_per_host = 1\nconfirm_above = 0\n"))
    assert (config.host_timeout, config.changes_per_host, config.confirm_above) == (0.5, 1, 0)
    assert config.open_hosts == 256  # the default
    assert load(write(tmp_path, HOSTS + "[limits]\nopen_hosts = 1\n")).open_hosts == 1


def test_list_fails_when_every_host_is_down(make_bot: Callable[..., Bot], tmp_path: Path, actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm("a")], "h2": [Vm("b")]})
    for host in ("h1", "h2"):
        (tmp_path / f"{host}.xml").unlink()  # the next open fails: the host is down
    bot.pool.close()
    bot = make_bot(config=bot.config)
    reply = bot.handle("list --all", actor)
    assert reply.status is Status.FAILED and reply.status.exit_code == 1, reply.text()
    assert "did not answer" in reply.headline


def test_list_with_one_host_down_still_answers(make_bot: Callable[..., Bot], tmp_path: Path, actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm("a")], "h2": [Vm("b")]})
    (tmp_path / "h2.xml").unlink()
    bot.pool.close()
    bot = make_bot(config=bot.config)
    reply = bot.handle("list --all", actor)
    assert reply.status is Status.OK and "1 host(s) did not answer" in reply.headline
