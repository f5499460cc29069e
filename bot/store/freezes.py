"""Off switches: the whole fleet or one host in read-only mode, kept in SQLite.

Stored, not in memory, so a freeze typed in Slack also stops ``vmbot exec``
on the same store, and survives a restart of the bot during maintenance.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import times
from bot.store.db import Store

FLEET = "*"


@dataclass(frozen=True)
class Freeze:
    scope: str  # FLEET or a host name
    user: str
    since: str
    reason: str

    def line(self) -> str:
        what = "the whole fleet is" if self.scope == FLEET else f"host {self.scope} is"
        why = f" ({self.reason})" if self.reason else ""
        return f"frozen: {what} read-only, frozen by {self.user} since {times.minute(self.since)}{why}"


class Freezes:
    def __init__(self, db: Store) -> None:
        self.db = db
        db.create("freezes", {"scope": str, "user": str, "since": str, "reason": str}, "scope")

    def active(self) -> list[Freeze]:
        rows = self.db.all("SELECT scope, user, since, reason FROM freezes ORDER BY scope")
        return [Freeze(*r) for r in rows]

    def blocking(self, host: str) -> Freeze | None:
        """The freeze that stops changes on ``host`` (the fleet-wide one first), if any."""
        found = {f.scope: f for f in self.active()}
        return found.get(FLEET) or found.get(host)

    def freeze(self, scope: str, user: str, reason: str = "") -> Freeze | None:
        """Freeze ``scope``; returns the existing freeze instead if it was already frozen."""
        since = times.iso()
        added = self.db.run(
            "INSERT OR IGNORE INTO freezes (scope, user, since, reason) VALUES (?, ?, ?, ?)",
            [scope, user, since, reason],
        )
        if added == 1:
            return None
        return next(f for f in self.active() if f.scope == scope)

    def thaw(self, scope: str | None) -> list[Freeze]:
        """Lift one scope's freeze, or every freeze when scope is None; returns what was lifted."""
        lifted = [f for f in self.active() if scope is None or f.scope == scope]
        for f in lifted:
            self.db.run("DELETE FROM freezes WHERE scope = ?", [f.scope])
        return lifted
