"""Defect 14, the smaller ones: each reproduced on real parts, then fixed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, audit_rows, vmbot_exe


def test_dry_run_on_a_large_glob_shows_the_preview(make_bot: Callable[..., Bot], actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm(f"web-{i:02d}") for i in range(12)]})
    reply = bot.handle("destroy 'web-*' --dry-run", actor)
    assert reply.status is Status.OK and reply.headline.startswith("dry run"), reply.text()
    assert sum("web-" in line for line in reply.lines) == 12
    assert all(r["decision"] == "dry-run" for r in audit_rows(bot))


def test_a_bug_in_a_fan_out_function_is_not_a_host_down(demo_bot: Bot) -> None:
    def broken(_host: str, _conn: object) -> None:
        raise ZeroDivisionError("a bug, not a host")

    with pytest.raises(ZeroDivisionError):
        demo_bot.pool.fan_out(broken)
    assert all(demo_bot.pool.status(h) is None for h in demo_bot.pool.names)


def test_a_missing_test_driver_file_is_one_line_without_libxml2_noise(tmp_path: Path) -> None:
    cfg = tmp_path / "vmbot.toml"
    cfg.write_text(f'[hosts]\nlab = "test://{tmp_path}/missing.xml"\n[terminal]\nusers = {{ root = "U0ROOT" }}\n')
    done = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(cfg), "--", "/vm list"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "missing.xml" in done.stderr, done.stderr
    assert "I/O warning" not in done.stderr and "failed to load" not in done.stderr


def test_a_test_driver_file_that_goes_away_is_a_host_down_without_noise(tmp_path: Path) -> None:
    fleet = tmp_path / "lab.xml"
    fleet.write_text((Path(__file__).parent.parent / "bot" / "demo" / "kvm01.xml").read_text())
    cfg = tmp_path / "vmbot.toml"
    cfg.write_text(f'[hosts]\nlab = "test://{fleet}"\n[terminal]\nusers = {{ root = "U0ROOT" }}\n')
    from bot.config import load
    from bot.hypervisor.pool import HostDown, Pool

    pool = Pool(load(cfg).hosts)
    fleet.unlink()
    try:
        with pytest.raises(HostDown, match="no such file"):
            pool.call("lab", lambda c: c.getLibVersion())
    finally:
        pool.close()


def test_a_refused_exec_as_is_audited(tmp_path: Path) -> None:
    cfg = tmp_path / "vmbot.toml"
    cfg.write_text(
        '[hosts]\nlab = "test:///default"\n[store]\npath = "vmbot.db"\n[terminal]\nusers = { root = "U0ROOT" }\n'
    )
    done = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(cfg), "--as", "U0BOSS", "--", "/vm list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    import sqlite3

    with sqlite3.connect(tmp_path / "vmbot.db") as db:
        rows = db.execute("SELECT slack_user, unix_user, action, decision, text FROM operations").fetchall()
    assert rows and rows[0][:4] == ("U0ROOT", "root", "as", "refused") and "U0BOSS" in rows[0][4], rows


def test_policy_check_warns_about_an_empty_policy(tmp_path: Path) -> None:
    for text in ("", "roles: {}\ngrants: []\n"):
        (tmp_path / "p.yml").write_text(text)
        done = subprocess.run(
            [vmbot_exe(), "policy", "check", str(tmp_path / "p.yml")], capture_output=True, text=True, timeout=60
        )
        assert "grants nothing" in done.stdout + done.stderr, (text, done.stdout, done.stderr)
