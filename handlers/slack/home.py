"""App Home: the fleet at a glance, rebuilt each time a user opens the tab."""

from __future__ import annotations

from collections import Counter

from bot.hypervisor.fleet import Inventory
from bot.store.freezes import Freeze
from handlers.slack.blocks import esc, row_line, section

ATTENTION_LIMIT = 20


def home_view(hosts: list[str], inv: Inventory, freezes: list[Freeze], pending: int) -> dict:
    """Counts by state per host, hosts that don't answer, and VMs that need a look.

    Built from what the caller read, so the view needs no access to the bot.
    """
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": "vmbot fleet"}}]
    blocks += [section(f":snowflake: {esc(f.line())}") for f in freezes]
    if pending:
        blocks.append(section(f":hourglass_flowing_sand: {pending} request(s) waiting for approval"))
    for host in hosts:
        if host in inv.down:
            blocks.append(section(f":black_circle: *{esc(host)}* — {esc(inv.down[host])}"))
            continue
        rows = inv.on(host)
        counts = Counter("crashed" if r.state.crashed else r.state.name for r in rows)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no VMs"
        blocks.append(section(f"*{esc(host)}*: {summary}"))
    attention = [r for r in inv.rows if r.state.crashed or r.state.name == "paused"]
    if attention:
        lines = [f"{row_line(r)} on {esc(r.ref.host)}" for r in attention[:ATTENTION_LIMIT]]
        more = len(attention) - ATTENTION_LIMIT
        blocks.append(section("*Needs attention*\n" + "\n".join(lines) + (f"\n…and {more} more" if more > 0 else "")))
    return {"type": "home", "blocks": blocks[:100]}
