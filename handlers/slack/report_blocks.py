"""Reports as Block Kit: summary first, then details, never a payload Slack rejects.

Every line is escaped (VM names are hostile text). The first message holds
the headline, the summary and the start of the attention list; the rest go
in further messages (the digest posts them in the first one's thread). Lines
past the caps are counted, not sent: the terminal report has them all.
"""

from __future__ import annotations

from bot import times
from bot.reply import Reply, visible
from bot.reports.alerts import Alert
from bot.reports.model import MARK, Report
from handlers.slack.blocks import MAX_SECTION, Message, chunks, context, esc, messages, paginate, section

FIRST_ATTENTION = 15  # attention lines in the first message
MAX_ATTENTION = 150  # attention lines in all
MAX_HOST_LINES = 150
HEADER_MAX = 150  # Slack's header text limit


def _line(mark: str, text: str) -> str:
    return f"{mark} {esc(text)}".strip()


def _capped(lines: list[str], cap: int, what: str) -> list[str]:
    if len(lines) <= cap:
        return lines
    return [*lines[:cap], f"…and {len(lines) - cap} more {what} (the full list: `vmbot exec -- /vm report`)"]


def summary_blocks(report: Report) -> list[dict]:
    head = {"type": "header", "text": {"type": "plain_text", "text": visible(report.headline())[:HEADER_MAX]}}
    blocks: list[dict] = [head]
    if report.summary:
        blocks.append(section("\n".join(esc(s) for s in report.summary)))
    note = f"generated {times.minute(report.generated)}"
    if report.scope:
        note += f" · only what <@{esc(report.scope)}> may see"
    blocks.append(context(note))
    return blocks


def report_pages(report: Report) -> list[Message]:
    """All messages for one report; the first is the summary."""
    attention = _capped([_line(MARK.get(i.level, ""), i.text) for i in report.attention], MAX_ATTENTION, "items")
    first = summary_blocks(report)
    if attention:
        top = attention[:FIRST_ATTENTION]
        first += [section(c) for c in chunks(["*Needs attention*", *top], MAX_SECTION)]
        rest = attention[FIRST_ATTENTION:]
    else:
        rest = []
    details: list[dict] = [section(c) for c in chunks(rest, MAX_SECTION)]
    host_lines = []
    for s in report.sections:
        host_lines.append(f"*{esc(s.title)}*: {esc(s.summary)}")
        host_lines += [f"    {_line(MARK.get(i.level, ''), i.text)}" for i in s.items]
    details += [section(c) for c in chunks(_capped(host_lines, MAX_HOST_LINES, "host lines"), MAX_SECTION)]
    text = esc(report.headline())[:300]
    pages = paginate(first, text)
    if details:
        pages += paginate(details, f"{text} (details)")
    return pages


def report_blocks(report: Report) -> list[dict]:
    """The same report as one block list, for a reply that ``blocks.messages`` paginates."""
    return [b for page in report_pages(report) for b in page["blocks"]]


def reply_messages(reply: Reply, who: str | None = None) -> list[Message]:
    """``blocks.messages`` for any reply, with its report's blocks when it carries one."""
    extra = report_blocks(reply.report)[1:] if reply.report else []  # the reply's headline stands for the header
    return messages(reply, who, extra)


def alert_message(alert: Alert) -> Message:
    icon = {"red": ":red_circle:", "amber": ":large_orange_circle:", "green": ":large_green_circle:"}
    text = f"{icon.get(alert.level, '')} {esc(alert.text)}"
    return {"text": esc(alert.text)[:300], "blocks": [section(text)]}
