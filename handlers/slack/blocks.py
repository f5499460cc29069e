"""Replies as Block Kit, within Slack's limits, with every name escaped.

VM names are hostile text: a VM called ``<!channel>`` must never ping anyone,
so everything from a user or a hypervisor passes through ``esc`` before it
reaches mrkdwn. Long answers are split into several messages rather than
letting Slack reject one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from bot.hypervisor.fleet import VmRow
from bot.reply import Card, Listing, Reply, Status, mark, state_word, visible

MAX_BLOCKS = 45  # Slack allows 50; keep room for a header and a footer
MAX_SECTION = 2900  # Slack allows 3000 characters in a section's text
MAX_MESSAGE = 9000  # keep a whole message well under ~10k characters
ICONS = {Status.OK: "", Status.REFUSED: ":no_entry: ", Status.FAILED: ":warning: ", Status.USAGE: ":grey_question: "}
ICONS[Status.PENDING] = ":hourglass_flowing_sand: "
DANGER = {"destroy", "reset"}
Message = dict  # {"text": ..., "blocks": [...]}


def esc(text: object) -> str:
    """Escape for mrkdwn: Slack's control characters are exactly &, < and >; bidi and control
    characters are shown as ``\\uXXXX`` (``reply.visible``) so a name cannot reorder its line."""
    return visible(str(text)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION]}}


def context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:MAX_SECTION]}]}


def chunks(lines: Iterable[str], limit: int = MAX_SECTION) -> list[str]:
    """Pack lines into texts no longer than ``limit``, cutting a single huge line if it must."""
    out: list[str] = []
    current = ""
    for line in lines:
        line = line[:limit]
        if current and len(current) + 1 + len(line) > limit:
            out.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        out.append(current)
    return out


def messages(reply: Reply, who: str | None = None, extra: Iterable[dict] = ()) -> list[Message]:
    """Render a reply as one or more messages; each has a plain ``text`` fallback.

    ``extra`` are blocks rendered elsewhere (a report, by report_blocks), paginated with the rest.
    """
    head = ICONS.get(reply.status, "") + (f"<@{who}>: " if who else "") + esc(reply.headline)
    blocks: list[dict] = [section(head)] if reply.headline or who else []
    blocks += [section(esc_block) for esc_block in chunks(esc(line) for line in reply.lines)]
    if reply.listing:
        blocks += listing_blocks(reply.listing)
    if reply.card:
        blocks += card_blocks(reply.card)
    if reply.code:
        blocks += [section(f"```{c}```") for c in chunks(esc(reply.code).splitlines(), MAX_SECTION - 6)]
    if reply.console:
        blocks += [section(f"```{c}```") for c in chunks((esc(x) for x in reply.console), MAX_SECTION - 6)]
    blocks += extra
    if reply.note:
        blocks.append(context(esc(reply.note)))
    if reply.error_id:
        blocks.append(context(f"error id `{esc(reply.error_id)}`"))
    return paginate(blocks, fallback(reply))


def fallback(reply: Reply) -> str:
    """The notification text: escaped, and short, as Slack shows it in previews."""
    return esc(reply.headline or "vmbot")[:300]


def paginate(blocks: list[dict], text: str) -> list[Message]:
    """Split blocks into messages that respect the block and size limits."""
    pages: list[list[dict]] = [[]]
    size = 0
    for block in blocks:
        n = len(json.dumps(block))
        if pages[-1] and (len(pages[-1]) >= MAX_BLOCKS or size + n > MAX_MESSAGE):
            pages.append([])
            size = 0
        pages[-1].append(block)
        size += n
    total = len(pages)
    return [
        {"text": text if total == 1 else f"{text} ({i}/{total})", "blocks": page} for i, page in enumerate(pages, 1)
    ]


def row_line(row: VmRow) -> str:
    return f"{mark(row)} `{esc(row.ref.name)}` {state_word(row)}{'  · autostart' if row.autostart else ''}"


def listing_blocks(listing: Listing) -> list[dict]:
    blocks: list[dict] = []
    for host, rows in listing.hosts.items():
        lines = [row_line(r) for r in rows] or ["_no VMs match_"]
        title = f"*{esc(host)}* ({len(rows)})"
        for i, text in enumerate(chunks(lines, MAX_SECTION - len(title) - 10)):
            blocks.append(section(f"{title if i == 0 else f'*{esc(host)}* (cont.)'}\n{text}"))
    if listing.down:
        blocks.append(context("\n".join(f":black_circle: {esc(why)}" for why in listing.down.values())))
    return blocks


def button(action: str, card: Card) -> dict:
    """A button that names its VM by host + UUID; the click goes through the policy again."""
    value = json.dumps({"a": action, "h": card.ref.host, "u": card.ref.uuid})
    b = {"type": "button", "text": {"type": "plain_text", "text": action}, "action_id": f"vm:{action}", "value": value}
    if action in DANGER:
        b["style"] = "danger"
        b["confirm"] = {
            "title": {"type": "plain_text", "text": f"{action.capitalize()} this VM?"},
            "text": {"type": "plain_text", "text": esc(f"{action} {card.ref.host}/{card.ref.name}")[:300]},
            "confirm": {"type": "plain_text", "text": action.capitalize()},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
    return b


def card_blocks(card: Card) -> list[dict]:
    fields = [{"type": "mrkdwn", "text": f"*{esc(k)}*\n{esc(v)}"[:2000]} for k, v in card.fields]
    blocks = [{"type": "section", "fields": fields[i : i + 10]} for i in range(0, len(fields), 10)]
    if card.actions:
        blocks.append(
            {"type": "actions", "block_id": "vm_actions", "elements": [button(a, card) for a in card.actions]}
        )
    return blocks
