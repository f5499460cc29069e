"""The terminal adapter: the bot's replies as text, from a prompt or a pipe."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bot.reply import Reply, Status, visible
from bot.service import Bot
from bot.store.audit import Actor, AuditDecision
from bot.text import printable
from handlers.terminal.identity import IdentityError, terminal_user, unix_user

PROMPT = "vmbot> "
HISTORY = Path(os.environ.get("VMBOT_HISTORY", Path.home() / ".vmbot_history"))


def banner(bot: Bot, user: str) -> str:
    if bot.config.demo:
        where = f"the embedded demo fleet ({', '.join(bot.pool.names)}, libvirt's test driver)"
        note = "Demo state lives in this process and is lost when you exit."
    else:
        where = f"{len(bot.pool.names)} host(s) from {bot.config.source}"
        note = "Every command is audited."
    return f"vmbot shell on {where}, acting as {user}.\n{note} Type help, /as USER_ID, or quit."


def lines(stream: TextIO, interactive: bool) -> Iterator[str]:
    """Commands one per line; a prompt with history when a person is typing."""
    if not interactive:
        for line in stream:
            if line.strip():
                print(f"{PROMPT}{printable(line.strip())}")
                yield line.strip()
        return
    import readline

    with contextlib.suppress(OSError):
        readline.read_history_file(HISTORY)
    try:
        while True:
            try:
                line = input(PROMPT).strip()
            except EOFError:
                print()
                return
            if line:
                yield line
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(HISTORY)


def shell(bot: Bot, user: str, stream: TextIO = sys.stdin) -> int:
    """Run commands until EOF or quit; returns the last command's exit code."""
    print(banner(bot, user))
    code = 0
    for line in lines(stream, stream.isatty()):
        if line in ("quit", "exit", "/quit"):
            break
        if line.startswith("/as") and printable(line) == line:  # not UTF-8: bot.handle refuses it, audited
            user, code = _switch(bot, user, line)
            continue
        reply = bot.handle(line, actor(user))
        show(reply)
        code = reply.status.exit_code
    return code


def show(reply: Reply) -> None:
    """Print the reply; a screenshot is saved to a new private file whose name no VM chose."""
    print(visible(reply.text()))  # a VM name's bidi override or ESC must not rewrite the terminal
    if att := reply.attachment:
        fd, path = tempfile.mkstemp(prefix="vmbot-", suffix=Path(att.filename).suffix or ".bin")
        with os.fdopen(fd, "wb") as f:
            f.write(att.content)
        print(f"saved to {path}")


def _switch(bot: Bot, user: str, line: str) -> tuple[str, int]:
    parts = line.split()
    if len(parts) != 2:
        print("usage: /as USER_ID")
        return user, 2
    try:
        new = terminal_user(bot.config, parts[1])
    except IdentityError as e:
        refused = AuditDecision.REFUSED  # who tried to be whom
        bot.audit.record(actor(user), "as", line, "as", refused, Status.REFUSED.value, str(e))
        print(e)
        return user, 1
    print(f"now acting as {new}")
    return new, 0


def actor(user: str) -> Actor:
    return Actor(user=user, unix_user=unix_user(), source="terminal")
