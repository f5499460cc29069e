"""Defect 3: a row left "running" by a process that died is marked interrupted at the next start,
and a database error in the middle of an operation never leaves two rows for it.

The dead process is real: a child python opens the store, begins a row and is
killed with SIGKILL; the store refusing a write is a trigger added from a
second connection (the tests run as root, so file modes would not stop sqlite).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor, Audit
from tests.conftest import Vm, audit_rows

CHILD = """
import os, sys, time
from bot.store.audit import Actor, Audit
a = Audit(sys.argv[1])
a.begin(Actor("UDEAD"), "dead01", "start web-03", "start", "allowed", host="h1", vm_name="web-03")
print("begun", flush=True)
time.sleep(60)
"""


def begin_and_die(db: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "begun"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


def test_a_row_left_running_by_a_dead_process_is_interrupted_at_start(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    db = tmp_path / "vmbot.db"
    begin_and_die(db)
    mine = Audit(str(db))  # a live process's running row is left alone
    live = mine.begin(Actor("ULIVE"), "live01", "start web-01", "start", "allowed")
    bot = make_bot(fleet={"h1": [Vm("web-03", "shut off")]}, store=str(db))
    rows = {r["command_id"]: r for r in audit_rows(bot)}
    dead = rows["dead01"]
    assert dead["result"] == "interrupted" and dead["ended_at"] >= dead["started_at"]
    assert "pid" in dead["detail"]
    assert rows["live01"]["result"] is None
    mine.finish(live, "ok")
    mine.close()


def test_a_pending_approval_row_is_not_interrupted_by_its_requester_exiting(tmp_path: Path) -> None:
    """``vmbot exec`` exits 3 while its request waits; the request's rows stay open for the approver."""
    db = tmp_path / "vmbot.db"
    child = (
        "import sys; from bot.store.audit import Actor, Audit; "
        "Audit(sys.argv[1]).begin(Actor('U1'), 'req01', 't', 'destroy', 'needs approval')"
    )
    subprocess.run([sys.executable, "-c", child, str(db)], check=True, timeout=30)
    audit = Audit(str(db))
    assert audit.recover() == 0
    assert next(iter(audit.db["operations"].rows))["result"] is None  # type: ignore[union-attr]
    audit.close()


def test_a_store_error_mid_operation_leaves_one_row(make_bot: Callable[..., Bot], tmp_path: Path, actor: Actor) -> None:
    db = tmp_path / "vmbot.db"
    bot = make_bot(fleet={"h1": [Vm("web-03", "shut off")]}, store=str(db))
    with sqlite3.connect(db) as other:
        other.execute(
            "CREATE TRIGGER no_finish BEFORE UPDATE ON operations BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    reply = bot.handle("start web-03", actor)
    assert reply.status is Status.FAILED
    assert "web-03" in reply.text() and "audit" in reply.text() and "Traceback" not in reply.text()
    rows = [r for r in audit_rows(bot) if r["action"] == "start"]
    assert len(rows) == 1, rows  # one operation, one row


def test_rows_never_end_before_they_start(memory_bot: Bot, actor: Actor) -> None:
    for _ in range(400):
        memory_bot.handle("state centos7", actor)
    bad = [r for r in audit_rows(memory_bot) if r["ended_at"] < r["started_at"]]
    assert not bad
