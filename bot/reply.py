"""What a command answers, as data: the terminal prints it, Slack renders it as blocks.

Names stay raw here; each adapter escapes them for its own medium.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from bot.hypervisor.fleet import VmRef, VmRow
from bot.reports.model import Report

# Control characters other than newline and tab, and Unicode's bidi controls (embeddings, overrides,
# isolates, marks): a VM named "db-01 \u202edetratser" would turn the rest of a line around in Slack
# or a terminal, and \r or ESC would rewrite a terminal line. Each becomes a visible \uXXXX.
INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every control and bidi character shown as ``\\uXXXX``; newlines and tabs stay."""
    return INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def error_id() -> str:
    """A short id that ties a user's error line to the log and the audit row."""
    return secrets.token_hex(3)


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
        out = [self.headline] if self.headline else []
        out += self.lines
        if self.listing:
            out += listing_text(self.listing)
        if self.card:
            out += [f"{k + ':':<15} {v}" for k, v in self.card.fields]
            if self.card.actions:
                out.append(f"{'Actions:':<15} {', '.join(self.card.actions)}")
        if self.code:
            out.append(self.code.rstrip("\n"))
        if self.console:
            out += self.console
        if self.report:
            out.append(self.report.body())
        if self.attachment:
            att = self.attachment
            out.append(f"[{att.mimetype}, {len(att.content)} bytes: {att.filename}]")
        if self.note:
            out.append(f"({self.note})")
        return "\n".join(out)


MARKS = {"running": "🟢", "paused": "🟡", "shut off": "🔴", "crashed": "⚫"}


def mark(row: VmRow) -> str:
    """The state mark operators know: crashed wins over the plain state name."""
    return MARKS["crashed"] if row.state.crashed else MARKS.get(row.state.name, "⚪")


def state_key(row: VmRow) -> str:
    """The state a count groups by: crashed wins over the plain state name."""
    return "crashed" if row.state.crashed else row.state.name


def state_counts(rows: Iterable[VmRow]) -> Counter[str]:
    return Counter(state_key(r) for r in rows)


def needs_look(row: VmRow) -> bool:
    """Crashed or paused: what a summary points at before anything else."""
    return row.state.crashed or row.state.name == "paused"


def listing_text(listing: Listing) -> list[str]:
    out: list[str] = []
    for host, rows in listing.hosts.items():
        out.append(f"{host}:")
        out += [f"  {mark(r)} {r.ref.name:<24} {state_word(r)}{'  autostart' if r.autostart else ''}" for r in rows]
        if not rows:
            out.append("  (no VMs match)")
    out += list(listing.down.values())
    return out


def state_word(row: VmRow) -> str:
    """virsh's word for the state, with "(crashed)" when a killed QEMU left it shut off."""
    return f"{row.state.name} (crashed)" if row.state.crashed and row.state.name != "crashed" else row.state.name
