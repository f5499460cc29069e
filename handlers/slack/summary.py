"""Answers that fit Slack at any size: a fleet summary in one message, the full list as a file.

A ``response_url`` takes 5 posts, and nobody reads 163 messages anyway. A list
too long for one message becomes counts by state and by host, the hosts that
did not answer and the VMs that need a look; every VM is in a text file sent to
the requester. App Home shows the same summary.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.hypervisor.fleet import VmRow
from bot.reply import MARKS, Attachment, Listing, Reply, needs_look, state_counts
from handlers.slack.blocks import Message, context, esc, row_line, section
from handlers.slack.report_blocks import reply_messages

MAX_POSTS = 5  # Slack's limit per response_url
INLINE_ROWS = 120  # above this a list is summarised without rendering it first
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
    """The plain-text answer; the name is ours, never a VM's."""
    return Attachment(filename, reply.text().encode(), "text/plain", reply.headline[:200] or filename)


def summary_message(reply: Reply, listing: Listing, who: str | None) -> Message:
    head = (f"<@{who}>: " if who else "") + esc(reply.headline)
    blocks = [section(head), *summary_blocks(listing.hosts, listing.down)]
    said = f"{reply.note}; " if reply.note else ""
    blocks.append(context(esc(f"{said}the full list was sent to you as a file (vmbot-list.txt)")))
    return {"text": esc(reply.headline)[:300], "blocks": blocks}


def summary_blocks(hosts: dict[str, list[VmRow]], down: dict[str, str]) -> list[dict]:
    """Counts by state and by host, hosts down, what needs a look: a few blocks at any fleet size."""
    all_rows = [r for rows in hosts.values() for r in rows]
    blocks = [section(f"*By state*: {counts_line(all_rows) or 'no VMs'}")]
    names = list(hosts)
    lines = [f"`{esc(h)}` {len(hosts[h])}: {counts_line(hosts[h], short=True) or 'no VMs'}" for h in names[:HOST_LINES]]
    if len(names) > HOST_LINES:
        lines.append(f"…and {len(names) - HOST_LINES} more host(s)")
    blocks.append(section(f"*By host* ({len(names)})\n" + "\n".join(lines)))
    if down:
        why = [f":black_circle: {esc(reason)}" for reason in list(down.values())[:DOWN_LINES]]
        if len(down) > DOWN_LINES:
            why.append(f"…and {len(down) - DOWN_LINES} more")
        blocks.append(section(f"*Hosts down* ({len(down)})\n" + "\n".join(why)))
    look = [r for r in all_rows if needs_look(r)]
    if look:
        shown = [f"{row_line(r)} on `{esc(r.ref.host)}`" for r in look[:LOOK_LINES]]
        if len(look) > LOOK_LINES:
            shown.append(f"…and {len(look) - LOOK_LINES} more")
        blocks.append(section(f"*Needs a look* ({counts_line(look)})\n" + "\n".join(shown)))
    return blocks


def counts_line(rows: Iterable[VmRow], short: bool = False) -> str:
    counts = state_counts(rows)
    keys = [k for k in ORDER if counts.get(k)] + sorted(k for k in counts if k not in ORDER)
    if short:
        return " ".join(f"{MARKS.get(k, '⚪')} {counts[k]}" for k in keys)
    return " · ".join(f"{MARKS.get(k, '⚪')} {counts[k]} {k}" for k in keys)
