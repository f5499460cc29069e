"""App Home: the fleet at a glance, rebuilt each time a user opens the tab."""

from __future__ import annotations

from collections import Counter

from bot.hypervisor.fleet import Inventory
from bot.reports.model import Report
from bot.store.freezes import Freeze
from handlers.slack.blocks import esc, row_line, section
from handlers.slack.report_blocks import summary_blocks

DIGEST_LINES = 10


def digest_blocks(report: Report) -> list[dict]:
    """The latest digest, cut to the viewer's grants: its summary and the top of its attention list."""
    blocks = summary_blocks(report)
    blocks[0]["text"]["text"] = f"Latest digest: {report.headline()}"[:150]
    lines = [esc(i.text) for i in report.attention[:DIGEST_LINES]]
    more = len(report.attention) - DIGEST_LINES
    if lines:
        blocks.append(section("\n".join(lines) + (f"\n…and {more} more" if more > 0 else "")))
    return [*blocks, {"type": "divider"}]


ATTENTION_LIMIT = 20


def home_view(
    hosts: list[str], inv: Inventory, freezes: list[Freeze], pending: int, digest: Report | None = None
) -> dict:
    """Counts by state per host, hosts that don't answer, and VMs that need a look.

    Built from what the caller read, so the view needs no access to the bot. ``digest`` is the
    latest digest already cut to the viewer's grants.
    """
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": "vmbot fleet"}}]
    if digest is not None:
        blocks += digest_blocks(digest)
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
