"""The thousand-host tier, CI-sized: 1,000 test-driver hosts (3 VMs each) and a silent host,
through `vmbot run` over HTTP against the fake Slack, and `vmbot exec` next to it.

bench/thousand_hosts.py runs the same thing at 1,000 x 100 and prints the figures; here
the fleet is small enough to open in seconds, and the bounds are sanity bounds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleetsim import (
    RunningBot,
    running_bot,
    silent_host,
    vm_name,
    vmbot_exec,
    wait_kept,
    write_config,
    write_hosts,
)

HOSTS, PER_HOST = 1000, 3


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    d = tmp_path_factory.mktemp("thousand")
    hosts = write_hosts(d / "fleet", HOSTS, PER_HOST)
    with silent_host() as silent:
        config = write_config(d, {**hosts, "silent": silent}, host_timeout=3.0)
        with running_bot(config) as running:
            yield running


def test_a_fleet_wide_list_is_one_summary_and_a_file_with_only_the_silent_host_down(bot: RunningBot) -> None:
    call, took = bot.answer("list --all", "first")
    text = call.args["text"]
    assert text == f"{HOSTS * PER_HOST} VMs on {HOSTS} host(s); 1 host(s) did not answer", text
    blocks = str(call.args["blocks"])
    assert "*Hosts down* (1)" in blocks and "silent: unreachable since" in blocks
    bot.fake.wait_for("files.completeUploadExternal", timeout=30)
    (file,) = bot.fake.files.values()
    body = (file.data or b"").decode()
    assert sum(1 for line in body.splitlines() if " vm-" in line) == HOSTS * PER_HOST
    assert bot.fake.posts_per_response_url() == {"first": 1} and bot.fake.refused_posts() == {}
    assert took < 120  # sanity only; the bench measures


def test_exec_next_to_the_running_bot_uses_its_inventory(bot: RunningBot) -> None:
    wait_kept(bot.config)
    bare, _ = vmbot_exec(bot.config, f"state {vm_name(500, 1)}")
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith(f"{vm_name(500, 1)} on h0500: running"), bare.stdout
    assert "asked every host" not in bare.stdout
    scoped, _ = vmbot_exec(bot.config, f"suspend h0700/{vm_name(700, 2)}")
    assert (scoped.returncode, scoped.stdout.strip()) == (0, f"h0700/{vm_name(700, 2)}: paused"), scoped.stderr


def test_a_later_list_comes_from_the_kept_inventory(bot: RunningBot) -> None:
    wait_kept(bot.config)
    call, _ = bot.answer("list --all", "later")
    assert call.args["text"].startswith(f"{HOSTS * PER_HOST} VMs on {HOSTS} host(s); 1 host(s) did not answer")
    assert "from the inventory kept by the bot" in str(call.args["blocks"])
    assert bot.fake.posts_per_response_url()["later"] == 1 and bot.fake.refused_posts() == {}
