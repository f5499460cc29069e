"""The backup catalog: one SQLite row per backup set, always rebuildable from the sets' manifests.

The row is a copy of the manifest (the manifest on disk is the truth), kept in
the audit's SQLite file so listing, retention and "the newest good backup of
this VM" are one query. ``reindex`` rebuilds it from the store: rows whose set
is gone are dropped, sets with no row are added.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from bot.backup.files import Store, StoreError
from bot.store.db import Store as Db

log = logging.getLogger(__name__)
KINDS = ("config", "disk")
STATUSES = ("good", "bad")

TABLE = "backups"
COLUMNS = {
    "id": str,
    "kind": str,  # config | disk
    "host": str,
    "vm_uuid": str,
    "vm_name": str,
    "created_at": str,  # ISO 8601 UTC
    "size": int,
    "status": str,  # good | bad
    "consistency": str,  # n/a (config only) | crash | application
    "autostart": int,
    "verified_at": str,
    "verify_result": str,
    "parent": str,  # an incremental disk backup: the set it builds on ("" for a full one)
    "checkpoint": str,  # the libvirt checkpoint this live backup created ("" if none): the next one builds on it
    "files": str,  # JSON list from the manifest
}
MANIFEST_KEYS = tuple(k for k in COLUMNS if k not in ("size", "files"))


@dataclass
class Entry:
    """One backup set as listed: what it is of, when, and whether it is still good."""

    id: str
    kind: str
    host: str
    vm_uuid: str
    vm_name: str
    created_at: str
    size: int
    status: str
    consistency: str
    autostart: bool
    verified_at: str = ""
    verify_result: str = ""
    parent: str = ""
    checkpoint: str = ""
    files: list[dict] = field(default_factory=list)

    @property
    def good(self) -> bool:
        return self.status == "good"

    def line(self) -> str:
        chain = f", incremental on {self.parent}" if self.parent else ""
        verified = f", verified {self.verified_at[:16]}Z: {self.verify_result}" if self.verified_at else ""
        return (
            f"{self.id}  {self.host}/{self.vm_name}  {self.kind}  {self.created_at[:19]}Z  "
            f"{human(self.size)}  {self.status}  {self.consistency}{chain}{self.where()}{verified}"
        )

    def where(self) -> str:
        """Where the disk files live when not in the bot's store: a pool on the VM's host (bot.backup.inpool)."""
        pools = sorted(
            {str(f["extra"]["pool"]) for f in self.files if isinstance(f.get("extra"), dict) and f["extra"].get("pool")}
        )
        return f", disks kept in pool {', '.join(pools)} on {self.host}" if pools else ""


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def from_manifest(m: dict) -> Entry:
    """A manifest read back from disk; anything missing or of the wrong type raises StoreError."""
    try:
        files = [dict(f) for f in m["files"]]
        return Entry(
            id=str(m["id"]),
            kind=str(m["kind"]),
            host=str(m["host"]),
            vm_uuid=str(m["vm_uuid"]),
            vm_name=str(m["vm_name"]),
            created_at=str(m["created_at"]),
            size=sum(int(f["size"]) for f in files),
            status=str(m.get("status", "good")),
            consistency=str(m.get("consistency", "n/a")),
            autostart=bool(m.get("autostart", False)),
            verified_at=str(m.get("verified_at", "")),
            verify_result=str(m.get("verify_result", "")),
            parent=str(m.get("parent", "")),
            checkpoint=str(m.get("checkpoint", "")),
            files=files,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"backup {m.get('id', '?')}: manifest lacks {e}") from None


def checked(entry: Entry) -> Entry:
    """Fields retention, restore and listing rely on, as they must be: one bad manifest is skipped, not fatal."""
    wrong = [k for k, ok in (("kind", entry.kind in KINDS), ("status", entry.status in STATUSES)) if not ok]
    try:
        if datetime.fromisoformat(entry.created_at).tzinfo is not None:  # stored naive, in UTC: one kind sorts
            wrong.append("created_at")
    except ValueError:
        wrong.append("created_at")
    if wrong:
        raise StoreError(f"backup {entry.id}: its manifest has a bad {', '.join(wrong)}; skipped")
    return entry


class Catalog:
    def __init__(self, db: Db) -> None:
        self.db = db
        db.create(TABLE, COLUMNS, "id", "vm_uuid", "created_at")
        have = {row[1] for row in db.all(f"PRAGMA table_info({TABLE})")}
        for column in COLUMNS.keys() - have:  # a catalog made before a column existed (the manifests have it)
            db.run(f"ALTER TABLE {TABLE} ADD COLUMN {column} TEXT DEFAULT ''")

    def add(self, entry: Entry) -> None:
        row = {k: getattr(entry, k) for k in COLUMNS if k != "files"} | {"files": json.dumps(entry.files)}
        row["autostart"] = int(entry.autostart)
        keys = list(row)
        self.db.run(
            f"INSERT OR REPLACE INTO {TABLE} ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})",
            [row[k] for k in keys],
        )

    def chain(self, entry: Entry) -> list[Entry]:
        """The full backup first, then each increment up to ``entry``; raises StoreError if a link is missing."""
        out, seen = [entry], {entry.id}
        while out[0].parent:
            parent = self.get(out[0].parent)
            if parent is None or parent.id in seen:
                raise StoreError(f"backup {entry.id} builds on {out[0].parent}, which is gone")
            out.insert(0, parent)
            seen.add(parent.id)
        return out

    def get(self, backup_id: str) -> Entry | None:
        rows = self._select("WHERE id = ?", [backup_id])
        return rows[0] if rows else None

    def entries(self, name: str | None = None, uuid: str | None = None, host: str | None = None) -> list[Entry]:
        """Newest first, optionally for one VM (by name as it was backed up, or by UUID)."""
        where, args = [], []
        for col, value in (("vm_name", name), ("vm_uuid", uuid), ("host", host)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        return self._select(("WHERE " + " AND ".join(where)) if where else "", args)

    def _select(self, where: str, args: list) -> list[Entry]:
        rows = self.db.dicts(f"SELECT * FROM {TABLE} {where} ORDER BY created_at DESC, id DESC", args)
        for r in rows:
            r["files"], r["autostart"] = json.loads(r["files"] or "[]"), bool(r["autostart"])
        return [Entry(**r) for r in rows]

    def mark(self, backup_id: str, status: str, verified_at: str, result: str) -> None:
        self.db.run(
            f"UPDATE {TABLE} SET status = ?, verified_at = ?, verify_result = ? WHERE id = ?",
            [status, verified_at, result, backup_id],
        )

    def delete(self, backup_id: str) -> None:
        self.db.run(f"DELETE FROM {TABLE} WHERE id = ?", [backup_id])

    def reindex(self, store: Store) -> tuple[int, int, list[str]]:
        """Rebuild from the manifests: (sets cataloged, rows dropped, problems with unreadable sets)."""
        on_disk, problems = {}, []
        for set_id in store.ids():
            try:
                on_disk[set_id] = checked(from_manifest(store.manifest(set_id)))
            except StoreError as e:
                log.warning("backup catalog: %s", e)
                problems.append(str(e))
        dropped = [r[0] for r in self.db.all(f"SELECT id FROM {TABLE}") if r[0] not in on_disk]
        for backup_id in dropped:
            self.delete(backup_id)
        for entry in on_disk.values():
            self.add(entry)
        return len(on_disk), len(dropped), problems


def manifest_fields(entry: Entry) -> dict:
    """What a set's manifest holds besides its files (the catalog row minus derived columns)."""
    return {k: getattr(entry, k) for k in MANIFEST_KEYS}
