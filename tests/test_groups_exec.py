"""User-group grants from the terminal: `vmbot exec` resolves them through Slack or says plainly it cannot.

Real parts: the `vmbot` entry point in-process, a policy file and a config on
disk, libvirt's test driver, and the local fake of Slack's Web API.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.cli import main
from tests.conftest import write_fleet
from tests.policyrig import FLEET, policy_file
from tests.slackfake import FakeSlack

ADMIN = "UADM07"  # named by no grant: only user group S0ADMINS makes them an admin


def config(tmp_path: Path) -> Path:
    policy_file(tmp_path)
    hosts = "\n".join(f'{h} = "{write_fleet(tmp_path / f"{h}.xml", vms)}"' for h, vms in FLEET.items())
    path = tmp_path / "vmbot.toml"
    path.write_text(
        f'[hosts]\n{hosts}\n[policy]\nfile = "policy.yml"\n[store]\npath = "v.db"\n[terminal]\nallow_as = true\n'
    )
    return path


def vmbot_exec(tmp_path: Path, command: str) -> int:
    return main(["exec", "--config", str(config(tmp_path)), "--as", ADMIN, "--", command])


def test_without_a_bot_token_a_group_grant_says_it_cannot_be_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    assert vmbot_exec(tmp_path, "start db-01") == 1
    out = capsys.readouterr().out
    assert f"no grant names {ADMIN}" in out
    assert "user group S0ADMINS could not be resolved" in out and "set SLACK_BOT_TOKEN" in out


def test_with_a_bot_token_the_group_is_looked_up_in_slack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeSlack() as fake:
        fake.usergroups = {"S0ADMINS": [ADMIN]}
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.token)
        monkeypatch.setenv("SLACK_API_URL", fake.base_url)
        assert vmbot_exec(tmp_path, "start db-01") == 0
        assert "db-01" in capsys.readouterr().out
        asked = [c.args.get("usergroup") for c in fake.calls() if c.method == "usergroups.users.list"]
        assert asked == ["S0ADMINS"]


def test_a_failing_lookup_denies_and_says_slacks_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeSlack() as fake:  # no such group: Slack answers no_such_subteam
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.token)
        monkeypatch.setenv("SLACK_API_URL", fake.base_url)
        assert vmbot_exec(tmp_path, "start db-01") == 1
    out = capsys.readouterr().out
    assert "user group S0ADMINS could not be resolved" in out and "no_such_subteam" in out


def test_an_unsafe_api_url_is_said_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-not-used")
    monkeypatch.setenv("SLACK_API_URL", "http://slack.example.com/api/")
    assert vmbot_exec(tmp_path, "start db-01") == 1
    assert "SLACK_API_URL must be https" in capsys.readouterr().out


def test_policy_explain_names_the_unresolved_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    args = ["policy", "explain", "--as", ADMIN, "--config", str(config(tmp_path)), "--", "/vm start db-01"]
    assert main(args) == 1
    assert "user group S0ADMINS could not be resolved" in capsys.readouterr().out
