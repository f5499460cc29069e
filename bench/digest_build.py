"""Benchmark: the daily status digest of a 100-host / 10,000-VM fleet (libvirt test-driver fleet files).

Measured in one run, on the same bot and fleet:
- baseline: ``/vm list --all`` through Bot.handle (one inventory fan-out, the plain listing);
- the digest: facts gathered (two fan-outs: host facts + inventory), the report
  built from them (attention, per-host lines, state history, approvals, health),
  and rendered to Slack messages (every payload within Slack's limits);
- the same report cut to one person's grants by a real YAML policy (a /vm report answer).
Each is the best of a few runs, after a warm-up that opens the 100 connections.
The issue's bar: the digest in under 2 s.

Run: .venv/bin/python bench/digest_build.py [HOSTS] [VMS_PER_HOST]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.reports.facts import gather
from bot.reports.scope import WHOLE_FLEET, for_user
from bot.store.audit import Actor
from handlers.slack.report_blocks import report_pages
from policies.engine import load_policy
from tests.reportrig import big_fleet, bot_on

POLICY = """\
roles:
  viewer: [report]
grants:
  - who: [U0HALF]
    role: viewer
    hosts: ["kvm0[0-4]*"]
    vms: ["vm-*"]
"""


def best(fn: Callable[[], object], runs: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    per_host = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp:
        uris = big_fleet(Path(tmp), hosts, per_host)
        bot = bot_on(uris, str(Path(tmp) / "vmbot.db"), host_timeout=30.0)
        try:
            actor = Actor("U0BENCH", "C0BENCH")
            bot.handle("list --all", actor)  # warm-up: open every connection
            base, _ = best(lambda: bot.handle("list --all", actor))

            def digest() -> list:
                facts, rep = bot.desk.report("status", WHOLE_FLEET)
                return [facts, rep, report_pages(rep)]

            took, (facts, rep, pages) = best(digest)  # type: ignore[misc]
            build, _ = best(lambda: bot.desk.report("status", WHOLE_FLEET, facts))
            render, _ = best(lambda: report_pages(rep))
            policy_file = Path(tmp) / "policy.yml"
            policy_file.write_text(POLICY)
            policy = load_policy(policy_file)
            scoped, _ = best(lambda: report_pages(bot.desk.report("status", for_user(policy, "U0HALF", ""), facts)[1]))
            gathered, _ = best(lambda: gather(bot.fleet))
        finally:
            bot.close()
    worst_blocks = max(len(p["blocks"]) for p in pages)
    worst_section = max(len(b.get("text", {}).get("text", "")) for p in pages for b in p["blocks"])
    worst_message = max(len(json.dumps(p["blocks"])) for p in pages)
    print(f"fleet: {hosts} hosts, {len(facts.rows)} VMs; {len(rep.attention)} attention items")
    print(f"baseline  /vm list --all            {base * 1000:8.1f} ms")
    print(f"digest    gather + build + render   {took * 1000:8.1f} ms  ({took / base:.2f}x list --all)")
    print(f"  gather facts (2 fan-outs)         {gathered * 1000:8.1f} ms")
    print(f"  build from facts                  {build * 1000:8.1f} ms")
    print(f"  render Slack messages             {render * 1000:8.1f} ms")
    print(f"scoped report (YAML policy, ~half)  {scoped * 1000:8.1f} ms (policy per VM, build + render, same facts)")
    print(
        f"messages: {len(pages)}; largest: {worst_blocks} blocks, {worst_section} chars/section, {worst_message} chars"
    )
    print(f"bar: digest under 2 s: {'yes' if took < 2 else 'NO'}")


if __name__ == "__main__":
    main()
