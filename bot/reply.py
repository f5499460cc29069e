"""What a command answers, as data: the terminal prints it, Slack renders it as blocks.

Names stay raw here; each adapter escapes them for its own medium.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain

from bot.hypervisor.fleet import VmRef, VmRow
from bot.reports.model import Report


# Control characters other than newline and tab, and Unicode's bidi controls (embeddings, overrides,
# isolates, marks): a VM named "db-01 \u202edetratser" would turn the rest of a line around in Slack
# or a terminal, and \r or ESC would rewrite a terminal line. Each becomes a visible \uXXXX.
def visible(text: str) -> str:
    """A whole answer (many lines) made safe to show: as ``shown``, but its newlines and tabs stay.

    Line by line, so a 100,000-line list whose lines are all printable is checked in C, not per character.
    """
    return "\n".join(shown(line, keep="\t") for line in text.split("\n"))


def error_id() -> str:
    """A short id that ties a user's error line to the log and the audit row."""
    return secrets.token_hex(3)


def shown(text: object, keep: str = "") -> str:
    """Text safe to show: control, format (bidi overrides, zero-width) and separator characters escaped.

    libvirt allows a newline in a VM name, so a raw name could fake lines in a listing or reorder
    text with a right-to-left override; virsh prints such a character as ``\\x0a`` and so do we.
    ``keep`` names characters left as they are (a tab in a console log).
    """
    text = str(text)
    if text.isprintable():  # every HIDDEN category is non-printable to str.isprintable
        return text
    return "".join(c if c in keep or unicodedata.category(c) not in HIDDEN else _escape(c) for c in text)


HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


class Status(Enum):
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"
    USAGE = "usage"
    PENDING = "pending"

    @property
    def exit_code(self) -> int:
        """``vmbot exec`` exit codes: 0 done, 1 refused or failed, 2 usage, 3 waiting."""
        return {Status.OK: 0, Status.USAGE: 2, Status.PENDING: 3}.get(self, 1)


@dataclass
class Listing:
    """``list``: VMs grouped by host, plus the hosts that did not answer."""

    hosts: dict[str, list[VmRow]]
    down: dict[str, str]


@dataclass
class Card:
    """``info``: one VM's facts and the actions its current state allows."""

    ref: VmRef
    fields: list[tuple[str, str]]
    actions: list[str]


@dataclass
class Attachment:
    """A file to show the requester (a screenshot); Slack uploads it, the terminal saves it."""

    filename: str
    content: bytes
    mimetype: str
    title: str = ""


@dataclass
class Reply:
    status: Status
    headline: str
    lines: list[str] = field(default_factory=list)
    listing: Listing | None = None
    card: Card | None = None
    code: str | None = None
    changed: bool = False  # a VM (or a freeze) changed: the adapter announces it to the channel
    error_id: str | None = None
    request_id: str | None = None
    attachment: Attachment | None = None
    console: list[str] | None = None  # boot log lines (start --console)
    report: Report | None = None  # report, schedule and migrate-check answers
    note: str = ""  # where the answer came from, when that matters (the kept inventory, or why every host was asked)

    def text(self) -> str:
        """The plain-text form: the terminal's output and Slack's fallback text."""
        return "\n".join(self.text_lines())

    def text_lines(self) -> Iterator[str]:
        """``text()`` line by line, each made safe to show: a 100,000-VM answer file is written from it
        without the whole answer ever being one string (twice, in UCS-4 for its state marks)."""
        out: Iterable[str] = [self.headline] if self.headline else []
        out = chain(out, self.lines, listing_lines(self.listing) if self.listing else ())
        if self.card:
            fields = [f"{k + ':':<15} {v}" for k, v in self.card.fields]
            out = chain(out, fields, [f"{'Actions:':<15} {', '.join(self.card.actions)}"] if self.card.actions else [])
        yield from (shown(line) for line in out)  # one entry, one line: a name cannot fake another
        if self.code:
            yield from (shown(line, "\t") for line in self.code.rstrip("\n").split("\n"))
        if self.console:
            yield from (shown(line, "\t") for line in self.console)
        if self.report:
            yield from (shown(line, "\t") for line in self.report.body().split("\n"))
        if self.attachment:
            att = self.attachment
            yield shown(f"[{att.mimetype}, {len(att.content)} bytes: {att.filename}]")
        if self.note:
            yield shown(f"({self.note})")


MARKS = {"running": "🟢", "paused": "🟡", "shut off": "🔴", "crashed": "⚫"}


def mark(row: VmRow) -> str:
    """The state mark operators know: crashed wins over the plain state name."""
    return MARKS["crashed"] if row.state.crashed else MARKS.get(row.state.name, "⚪")


def state_key(row: VmRow) -> str:
    """The state a count groups by: crashed wins over the plain state name."""
    return "crashed" if row.state.crashed else row.state.name


def state_counts(rows: Iterable[VmRow]) -> Counter[str]:
    """Counts by state_key, the state (code, reason) pairs counted first: 100 VMs share a few states."""
    by_state = Counter(r.state for r in rows)
    counts: Counter[str] = Counter()
    for st, n in by_state.items():
        counts["crashed" if st.crashed else st.name] += n
    return counts


def needs_look(row: VmRow) -> bool:
    """Crashed or paused: what a summary points at before anything else."""
    return row.state.crashed or row.state.name == "paused"


def listing_lines(listing: Listing) -> Iterator[str]:
    for host, rows in listing.hosts.items():
        yield f"{host}:"
        yield from (f"  {mark(r)} {r.ref.name:<24} {state_word(r)}{'  autostart' if r.autostart else ''}" for r in rows)
        if not rows:
            yield "  (no VMs match)"
    yield from listing.down.values()


def state_word(row: VmRow) -> str:
    """virsh's word for the state, with "(crashed)" when a killed QEMU left it shut off."""
    return f"{row.state.name} (crashed)" if row.state.crashed and row.state.name != "crashed" else row.state.name
