"""A report as data: attention items first, then a section per host; adapters render it.

Names stay raw here (each adapter escapes for its medium). Every item says
which host and VM it is about, so the same facts can be shown to the digest
channel whole and to one person only as far as their grants reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bot import times

RED, AMBER, GREEN, INFO = "red", "amber", "green", "info"
ORDER = {RED: 0, AMBER: 1, INFO: 2, GREEN: 3}
MARK = {RED: "🔴", AMBER: "🟠", GREEN: "🟢", INFO: "ℹ️"}


@dataclass(frozen=True)
class Item:
    level: str
    text: str
    host: str = ""
    vm: str = ""  # the VM's name; "" when the item is about the host (or the bot)
    uuid: str = ""


@dataclass
class Section:
    title: str
    summary: str
    items: list[Item] = field(default_factory=list)
    host: str = ""


@dataclass
class Report:
    kind: str  # status, autostart, backups, migrate-check
    title: str
    generated: datetime
    summary: list[str] = field(default_factory=list)
    attention: list[Item] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    scope: str = ""  # "" = the whole fleet; else whose grants it was cut to

    def sort(self) -> Report:
        """Worst first, then by host and VM, so the top of the message is what needs doing."""
        self.attention.sort(key=lambda i: (ORDER.get(i.level, 9), i.host, i.vm, i.text))
        return self

    def counts(self) -> dict[str, int]:
        out = {RED: 0, AMBER: 0}
        for item in self.attention:
            if item.level in out:
                out[item.level] += 1
        return out

    def headline(self) -> str:
        if self.kind == "migrate-check":
            return self.title
        c = self.counts()
        need = f"{c[RED]} red, {c[AMBER]} amber" if c[RED] or c[AMBER] else "nothing needs attention"
        return f"{self.title}: {need}"

    def text(self) -> str:
        """The terminal form: the headline, then the body."""
        return "\n".join([self.headline(), self.body()])

    def body(self) -> str:
        out = list(self.summary)
        if self.scope:
            out.append(f"(only what {self.scope} may see)")
        if self.attention:
            out.append("Needs attention:")
            out += [f"  {MARK.get(i.level, '')} {i.text}" for i in self.attention]
        for s in self.sections:
            out.append(f"{s.title}: {s.summary}")
            out += [f"  {MARK.get(i.level, '')} {i.text}" for i in s.items]
        out.append(f"generated {times.minute(self.generated)}")
        return "\n".join(out)


def vm_label(host: str, name: str) -> str:
    return f"{host}/{name}"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 30):.1f} GiB"
