"""A fleet and a YAML policy for the approval, freeze, lock and policy tests.

Real parts only: libvirt's test driver (a custom fleet file per test), a
policy file on disk loaded by the real engine, and a sqlite file under tmp_path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import libvirt

from bot.service import Bot
from bot.store.audit import Actor
from policies.engine import Policy, load_policy
from tests.conftest import Vm

WEB01 = "11111111-0000-4000-8000-000000000001"
FLEET = {
    "kvm01": [Vm("web-01", uuid=WEB01, vcpus=4, memory_mib=8192), Vm("web-02"), Vm("db-01", "shut off")],
    "kvm02": [Vm("app-01"), Vm("app-02", "paused")],
}
ADMINS = {f"UADM{i:02d}" for i in range(50)}

POLICY = """\
roles:
  viewer:   [list, state, info, hosts, audit]
  operator: [viewer, start, shutdown, reboot, suspend, resume, autostart]
  admin:    [operator, destroy, reset, undefine, dumpxml, freeze, thaw, policy]
grants:
  - who: [UREQ, UADM2, S0ADMINS]
    role: admin
  - who: [UOPS]
    role: operator
    channels: [C0OPS]
  - who: [UWEB]
    role: admin
    hosts: [kvm01]
    vms: ["web-*"]
approvals:
  - actions: [destroy, reset]
    approvers: admin
    count: 1
    expires: 30m
limits:
  max_targets_without_approval: 2
"""


def members(group: str) -> set[str]:
    return set(ADMINS) if group == "S0ADMINS" else set()


def policy_file(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(text)
    return path


def make_policy(tmp_path: Path, text: str = POLICY) -> Policy:
    return load_policy(policy_file(tmp_path, text), members)


def who(user: str, channel: str = "C0OPS") -> Actor:
    return Actor(user=user, channel=channel, unix_user="tester", source="slack")


def fleet_bot(make_bot: Callable[..., Bot], tmp_path: Path, store: str | None = None, text: str = POLICY) -> Bot:
    """A bot on the custom fleet with the YAML policy; the same ``store`` means the same sqlite file."""
    return make_bot(fleet=FLEET, policy=make_policy(tmp_path, text), store=store or str(tmp_path / "vmbot.db"))


def state(bot: Bot, name: str) -> str:
    (ref,) = bot.fleet.resolve([name]).refs
    return bot.life.state(ref).name


def on_host(bot: Bot, host: str, fn: Callable[[libvirt.virConnect], object]) -> object:
    """Change the fleet behind the bot's back, as another admin with virsh would."""
    return bot.pool.call(host, fn)


def rows(bot: Bot, where: str = "", args: list | None = None) -> list[dict]:
    return list(bot.audit.db["operations"].rows_where(where or None, args or [], order_by="id"))  # type: ignore[union-attr]
