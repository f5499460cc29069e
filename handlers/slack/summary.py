"""Answers that fit Slack at any size: a fleet summary in one message, the full list as a file.

A ``response_url`` takes 5 posts, and nobody reads 163 messages anyway. A list
too long for one message becomes counts by state and by host, the hosts that
did not answer and the VMs that need a look; every VM is in a text file sent to
the requester. App Home shows the same summary.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable

from bot.hypervisor.fleet import VmRow
from bot.reply import MARKS, Attachment, Listing, Reply, needs_look, state_counts, visible
from handlers.slack.blocks import Message, chunks, context, esc, row_line, section
from handlers.slack.report_blocks import reply_messages

MAX_POSTS = 5  # Slack's limit per response_url
INLINE_ROWS = 50  # above this a list is summarised (and sent whole as a file): nobody reads more in chat
HOST_LINES = 25  # hosts named one by one in a summary; the file has every host
DOWN_LINES = 15
LOOK_LINES = 15
ORDER = ["running", "paused", "shut off", "crashed"]


def fit(reply: Reply, who: str | None = None) -> tuple[list[Message], Attachment | None]:
    """The messages to post (never more than Slack's 5) and, when they do not hold it all, a file."""
    listing = reply.listing
    if listing is not None and sum(len(r) for r in listing.hosts.values()) > INLINE_ROWS:
        return [summary_message(reply, listing, who)], as_file(reply, "vmbot-list.txt")
    pages = reply_messages(reply, who)
    if listing is not None and len(pages) > 1:
        return [summary_message(reply, listing, who)], as_file(reply, "vmbot-list.txt")
    if len(pages) <= MAX_POSTS:
        return pages, None
    lines = len(reply.text().splitlines())
    first = pages[0]
    note = context(f"…{len(pages) - 1} more page(s): the whole answer ({lines} lines) was sent to you as a file")
    return [{**first, "blocks": [*first["blocks"][:48], note]}], as_file(reply, "vmbot-answer.txt")


def as_file(reply: Reply, filename: str) -> Attachment:
    """The plain-text answer; the name is ours, never a VM's. Written line by line into one buffer."""
    buf = io.BytesIO()
    for i, line in enumerate(reply.text_lines()):  # each line already shown, never obeyed (a bidi override, ESC)
        buf.write(b"\n" if i else b"")
        buf.write(line.encode())
    return Attachment(filename, buf.getvalue(), "text/plain", visible(reply.headline)[:200] or filename)


def summary_message(reply: Reply, listing: Listing, who: str | None) -> Message:
    head = (f"<@{who}>: " if who else "") + esc(reply.headline)
    blocks = [section(head), *summary_blocks(listing.hosts, listing.down)]
    said = f"{reply.note}; " if reply.note else ""
    blocks.append(context(esc(f"{said}the full list was sent to you as a file (vmbot-list.txt)")))
    return {"text": esc(reply.headline)[:300], "blocks": blocks}


def summary_blocks(hosts: dict[str, list[VmRow]], down: dict[str, str], every_host: bool = False) -> list[dict]:
    """Counts by state, what needs attention, hosts down, counts by host: a few blocks at any fleet size.

    ``every_host`` (App Home, 100 blocks of room) names every host and every silent one, packed
    into as few sections as Slack's limits allow; a message names the first few and says how many more.
    """
    per_host = {h: state_counts(rows) for h, rows in hosts.items()}  # each row counted once, not twice
    blocks = [section(f"*By state*: {counts_text(sum(per_host.values(), Counter())) or 'no VMs'}")]
    look = [r for rows in hosts.values() for r in rows if needs_look(r)]
    if look:
        shown = [f"{row_line(r)} on `{esc(r.ref.host)}`" for r in look]
        blocks += listed(f"*Needs attention* ({counts_line(look)})", shown, LOOK_LINES)
    if down:
        why = [f":black_circle: {esc(reason)}" for reason in down.values()]
        blocks += listed(f"*Hosts down* ({len(down)})", why, None if every_host else DOWN_LINES)
    lines = [f"`{esc(h)}` {len(rows)}: {counts_text(per_host[h], short=True) or 'no VMs'}" for h, rows in hosts.items()]
    blocks += listed(f"*By host* ({len(hosts)})", lines, None if every_host else HOST_LINES)
    return blocks


def listed(title: str, lines: list[str], limit: int | None) -> list[dict]:
    """A titled list: the first ``limit`` lines and how many more, or (None) all of them in sections."""
    if limit is not None and len(lines) > limit:
        lines = [*lines[:limit], f"…and {len(lines) - limit} more"]
    texts = chunks([title, *lines])
    return [section(t) for t in texts]


def counts_line(rows: Iterable[VmRow], short: bool = False) -> str:
    return counts_text(state_counts(rows), short)


def counts_text(counts: Counter[str], short: bool = False) -> str:
    keys = [k for k in ORDER if counts.get(k)] + sorted(k for k in counts if k not in ORDER)
    if short:
        return " ".join(f"{MARKS.get(k, '⚪')} {counts[k]}" for k in keys)
    return " · ".join(f"{MARKS.get(k, '⚪')} {counts[k]} {k}" for k in keys)
