"""Faults, each bounded in time: the store locked by another process past the busy timeout, the
store's filesystem full (a real small tmpfs), and a `vmbot shell` killed with SIGKILL while its
approval request waits. Each ends with a clear message, nothing half-done recorded as done, and the
bot working again when the fault ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, audit_rows, vmbot_exe
from tests.policyrig import POLICY, WEB01

HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_a_store_locked_by_another_process_past_the_busy_timeout(
    make_bot: Callable[..., Bot], tmp_path: Path, actor: Actor
) -> None:
    db = tmp_path / "vmbot.db"
    bot = make_bot(fleet={"h1": [Vm("web-01"), Vm("web-02", "shut off")]}, store=str(db))
    bot.handle("list", actor)
    bot.audit.db.execute("PRAGMA busy_timeout = 300")  # the real 10 s, shortened so the test stays fast
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        reply = bot.handle("start web-02", actor)
        assert time.monotonic() - started < 5
        assert reply.status is Status.FAILED, reply.text()
        assert reply.headline.startswith("the audit store cannot record this (database is locked)")
        assert "nothing was run" in reply.headline
    finally:
        holder.wait(timeout=10)
        holder.stdout.close()  # type: ignore[union-attr]
    assert bot.life.state(bot.fleet.resolve(["web-02"]).refs[0]).name == "shut off"  # nothing ran
    assert bot.handle("start web-02", actor).status is Status.OK  # the lock is gone: working again
    assert [r["result"] for r in audit_rows(bot) if r["action"] == "start"] == ["ok"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (the tests run as root, as CI does)."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_the_store_filesystem_full(make_bot: Callable[..., Bot], small_fs: Path, actor: Actor) -> None:
    bot = make_bot(fleet={"h1": [Vm("web-01"), Vm("web-02", "shut off")]}, store=str(small_fs / "vmbot.db"))
    assert bot.handle("list", actor).status is Status.OK
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # take every free byte
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    replies = [bot.handle("suspend web-01" if i % 2 == 0 else "resume web-01", actor) for i in range(40)]
    failed = [r for r in replies if r.status is Status.FAILED]
    assert failed, "the full filesystem was never noticed"
    for reply in failed:
        assert "Traceback" not in reply.text() and ("full" in reply.text() or "disk" in reply.text()), reply.text()
    filler.unlink()
    ok = bot.handle("start web-02", actor)
    assert ok.status is Status.OK, ok.text()  # space again: working again
    rows = audit_rows(bot)
    assert all(r["result"] for r in rows if r["action"] != "list"), "a row left running"


def test_sigkill_with_an_approval_pending_keeps_the_request(tmp_path: Path) -> None:
    """A shell killed while its request waits: the request survives, another user approves it, it runs once."""
    fleet = tmp_path / "kvm01.xml"
    from tests.conftest import write_fleet
    from tests.policyrig import FLEET

    uri = write_fleet(fleet, FLEET["kvm01"])
    (tmp_path / "policy.yml").write_text(POLICY)
    cfg = tmp_path / "vmbot.toml"
    cfg.write_text(
        f'[hosts]\nkvm01 = "{uri}"\n[store]\npath = "vmbot.db"\n[policy]\nfile = "policy.yml"\n'
        "[terminal]\nallow_as = true\n"
    )
    shell = subprocess.Popen(
        [vmbot_exe(), "shell", "--config", str(cfg), "--as", "UREQ"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert shell.stdin and shell.stdout
    shell.stdin.write(f"destroy kvm01/{WEB01}\n")
    shell.stdin.flush()
    request = None
    while request is None:
        line = shell.stdout.readline()
        assert line, "the shell ended before asking"
        if m := re.search(r"waiting for approval: request (\w+)", line):
            request = m.group(1)
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait(timeout=10)
    shell.stdin.close()
    shell.stdout.close()
    # a test-driver file gets fresh state per process, so the VM is running again here; the request lives on
    done = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(cfg), "--as", "UADM2", "--", f"/vm approve {request}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"request {request} approved by UADM2" in done.stdout and "destroyed" in done.stdout
    again = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(cfg), "--as", "UADM2", "--", f"/vm approve {request}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0 and "already approved by UADM2 and run" in again.stdout  # ran once
