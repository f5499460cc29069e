"""App Home: the fleet at a glance, rebuilt each time a user opens the tab."""

from __future__ import annotations

from bot.hypervisor.fleet import Inventory
from bot.reply import visible
from bot.reports.model import Report
from bot.store.freezes import Freeze
from handlers.slack.blocks import esc, section
from handlers.slack.report_blocks import summary_blocks as report_summary
from handlers.slack.summary import summary_blocks

DIGEST_LINES = 10


def digest_blocks(report: Report) -> list[dict]:
    """The latest digest, cut to the viewer's grants: its summary and the top of its attention list."""
    blocks = report_summary(report)
    blocks[0]["text"]["text"] = f"Latest digest: {visible(report.headline())}"[:150]
    lines = [esc(i.text) for i in report.attention[:DIGEST_LINES]]
    more = len(report.attention) - DIGEST_LINES
    if lines:
        blocks.append(section("\n".join(lines) + (f"\n…and {more} more" if more > 0 else "")))
    return [*blocks, {"type": "divider"}]


def home_view(
    hosts: list[str],
    inv: Inventory,
    freezes: list[Freeze],
    pending: int,
    digest: Report | None = None,
    note: str = "",
) -> dict:
    """Counts by state and by host, hosts that don't answer, and VMs that need a look, at any fleet size.

    Built from what the caller read, so the view needs no access to the bot. ``digest`` is the
    latest digest already cut to the viewer's grants.
    """
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": "vmbot fleet"}}]
    if digest is not None:
        blocks += digest_blocks(digest)
    blocks += [section(f":snowflake: {esc(f.line())}") for f in freezes[:10]]
    if pending:
        blocks.append(section(f":hourglass_flowing_sand: {pending} request(s) waiting for approval"))
    grouped = inv.by_host()
    up = {h: grouped.get(h, []) for h in hosts if h not in inv.down}
    blocks += summary_blocks(up, {h: inv.down[h] for h in hosts if h in inv.down}, every_host=True)
    if note:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": esc(note)}]})
    return {"type": "home", "blocks": blocks[:100]}
