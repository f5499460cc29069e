"""What the README and deploy/ tell people to paste must actually load."""

from __future__ import annotations

import re
from pathlib import Path

from bot.config import load
from policies.engine import load_policy

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_policy_loads(tmp_path: Path) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (tmp_path / "policy.yml").write_text(block)
    policy = load_policy(tmp_path / "policy.yml")
    assert "3 role(s), 1 grant(s)" in policy.reload()


def test_the_example_configs_load() -> None:
    deploy = load(ROOT / "deploy" / "vmbot.toml.example")
    assert deploy.hosts["kvm01"].startswith("qemu+ssh://vmbot@") and not deploy.allow_as
    assert deploy.schedule.jobs == {"digest": "0 8 * * 1-5", "autostart_report": "30 7 * * mon"}
    local = load(ROOT / "examples" / "local-qemu.toml")
    assert local.hosts == {"lab": "qemu:///system"}
