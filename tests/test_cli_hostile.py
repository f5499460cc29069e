"""The real ``vmbot`` CLI under hostile input: bytes that are not UTF-8, a closed pipe.

Each case runs the console script as a subprocess on the embedded demo fleet.
"""

from __future__ import annotations

import os
import subprocess

from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import vmbot_exe


def run(args: list[bytes | str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([vmbot_exe(), *args], input=stdin, capture_output=True, timeout=60, check=False)


def test_exec_with_non_utf8_bytes_is_a_usage_error() -> None:
    done = run(["exec", "--", b"/vm state \xff"])
    assert done.returncode == 2, done.stderr
    out = (done.stdout + done.stderr).decode()
    assert "UTF-8" in out and "Traceback" not in out


def test_shell_goes_on_after_a_non_utf8_line() -> None:
    done = run(["shell"], stdin=b"state \xff\xfe\nlist --all\n")
    out = done.stdout.decode() + done.stderr.decode()
    assert "Traceback" not in out and "UTF-8" in out
    assert "centos7" in out  # the next line ran
    assert done.returncode == 0


def test_a_surrogate_in_the_text_is_refused_and_audited_escaped(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("state \udcff", actor)
    assert reply.status is Status.USAGE
    row = list(demo_bot.audit.db["operations"].rows)[-1]  # type: ignore[union-attr]
    assert row["text"] == "state \\udcff" and row["result"] == "usage"


def test_a_closed_pipe_is_a_quiet_exit() -> None:
    """``vmbot exec -- "/vm list --all" | head -1``: the reader is gone; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is written: every write fails with EPIPE
    try:
        done = subprocess.run(
            [vmbot_exe(), "exec", "--", "/vm list --all"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr.decode()
    assert done.returncode in (0, 141)  # done, or killed by SIGPIPE as a plain Unix tool would be


def test_shell_as_with_non_utf8_bytes_is_refused_and_the_shell_goes_on() -> None:
    done = run(["shell"], stdin=b"/as U\xff\nstate centos7\n")
    out = done.stdout.decode() + done.stderr.decode()
    assert "Traceback" not in out and "UTF-8" in out and "centos7 on kvm01" in out
