"""Defect 15: the demo shows the feature the bot is for. destroy and reset wait for an approval by
the second demo user (``/as U0BOB``), through the real ``vmbot shell`` as the README walks it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from bot.config import demo
from bot.policy import Request, Target
from handlers.cli import make_policy
from tests.conftest import vmbot_exe

README = Path(__file__).parent.parent / "README.md"


def test_the_demo_policy_asks_for_approval_on_destroy_and_reset() -> None:
    policy = make_policy(demo())
    target = (Target("kvm01", "ubuntu20", "u"),)
    for action in ("destroy", "reset"):
        decision = policy.decide(Request("U0DEMO", "", action, True, target))
        assert decision.allowed and decision.needs_approval, decision
    assert not policy.decide(Request("U0DEMO", "", "start", True, target)).needs_approval


def test_the_readme_walk_through_waits_then_the_second_user_approves() -> None:
    walk = README.read_text()
    assert "/as U0BOB" in walk and "approve" in walk
    shell = subprocess.Popen(
        [vmbot_exe(), "shell"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert shell.stdin and shell.stdout

    def say(line: str, until: str) -> str:
        shell.stdin.write(line + "\n")  # type: ignore[union-attr]
        shell.stdin.flush()  # type: ignore[union-attr]
        while not shell.stdout.readline().startswith(f"vmbot> {line}"):  # type: ignore[union-attr]
            pass  # the rest of the previous answer
        seen = ""
        while until not in seen:
            out = shell.stdout.readline()  # type: ignore[union-attr]
            assert out, seen
            seen += out
        return seen

    try:
        asked = say("destroy ubuntu20", "approve: /vm approve")
        request = re.search(r"waiting for approval: request (\w+)", asked).group(1)  # type: ignore[union-attr]
        assert "ubuntu20                 running" in say("list", "kvm02:")  # nothing ran yet
        own = say(f"approve {request}", request)
        assert "someone else must approve it" in own, own  # never your own request
        say("/as U0BOB", "now acting as U0BOB")
        done = say(f"approve {request}", "destroyed")
        assert f"request {request} approved by U0BOB" in done
        assert "ubuntu20                 shut off" in say("list --all", "kvm02:")
    finally:
        shell.stdin.close()
        shell.wait(timeout=30)
        shell.stdout.close()
