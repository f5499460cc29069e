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


def test_the_readme_config_loads_and_names_only_parameters_its_transports_read(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (tmp_path / "vmbot.toml").write_text(block)
    config = load(tmp_path / "vmbot.toml")
    assert config.hosts["kvm01"].startswith("qemu+ssh://vmbot@") and "no_tty=1" in config.hosts["kvm01"]


def test_the_readme_shows_no_uri_its_config_check_would_refuse(tmp_path: Path) -> None:
    """Every libvirt URI quoted in the README passes the same check the config runs (bot.config.check_host)."""
    from bot.config import check_host

    whole = r"`((?:qemu|test)[a-z0-9+]*://[^`\s]*/(?:system|session|default)\b[^`\s]*)`"
    uris = set(re.findall(whole, (ROOT / "README.md").read_text()))
    assert any("qemu+ssh://" in u for u in uris) and any("qemu+libssh://" in u for u in uris)
    for shown in uris:
        uri = shown.replace("keyfile=...", "keyfile=/k")  # the table's shorthand for a key path
        check_host(tmp_path, "h", uri)
