"""Verify: re-read every file of a backup set and compare its sha256 with the manifest's.

A mismatch (a flipped byte, a truncated or missing file) marks the set bad in
the catalog and in its manifest, so a rebuilt catalog remembers it, restore
skips it, and retention stops counting it as a good copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libvirt

from bot.backup import inpool
from bot.backup.catalog import Catalog, Entry
from bot.backup.configbackup import iso_now
from bot.backup.digest import KIND, PLAIN, checksum
from bot.backup.files import Store, StoreError
from bot.hypervisor import links


@dataclass
class Verdict:
    entry: Entry
    failures: list[str]
    unknown: list[str] = field(default_factory=list)  # could not be read now (a host down): not marked bad

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unknown

    def line(self) -> str:
        what = f"{self.entry.id} ({self.entry.host}/{self.entry.vm_name}, {self.entry.kind})"
        if self.ok:
            return f"{what}: good, {len(self.entry.files)} file(s) match their sha256"
        if not self.failures:
            return f"{what}: NOT CHECKED: {'; '.join(self.unknown)}"
        return f"{what}: BAD: {'; '.join(self.failures)}"


def check_files(store: Store, entry: Entry) -> list[str]:
    """What does not match: one phrase per bad file; empty when every file matches."""
    failures = []
    for f in entry.files:
        if f in inpool.pool_files(entry):
            continue  # checked through libvirt (bot.backup.inpool.check)
        name = str(f.get("name", ""))
        try:
            path = store.file(entry.id, name)
            if not path.is_file():
                failures.append(f"{name} is missing")
                continue
            size, kind = path.stat().st_size, str(f.get("checksum", PLAIN))
            if kind not in (PLAIN, KIND):
                failures.append(f"{name} names a checksum vmbot does not know")
            elif size != int(f["size"]):
                failures.append(f"{name} has {size} bytes, the manifest says {f['size']}")
            elif checksum(path, kind) != f["sha256"]:
                failures.append(f"{name} does not match its sha256")
        except (StoreError, OSError, KeyError, ValueError) as e:
            failures.append(f"{name}: {e.__class__.__name__}")
    return failures


def missing(entry: Entry) -> list[str]:
    """What a set must list to be restorable: a set with no files matches every sum and restores nothing."""
    roles = {f.get("role") for f in entry.files}
    wanted = [("xml", "definition (XML)")] + ([("disk", "disk")] if entry.kind == "disk" else [])
    return [f"its manifest lists no {what} file" for role, what in wanted if role not in roles]


def in_pool(entry: Entry, uri: str | None) -> tuple[list[str], list[str]]:
    """The set's disks kept in its host's pool, re-hashed from a libvirt download stream on its own connection."""
    if not inpool.pool_files(entry):
        return [], []
    if uri is None:
        return [], [f"host {entry.host} is not configured"]
    try:
        conn = links.own(uri)
    except libvirt.libvirtError as e:
        return [], [f"cannot reach {entry.host} ({e.get_error_message()})"]
    try:
        return inpool.check(conn, entry)
    finally:
        conn.close()


def verify(store: Store, catalog: Catalog, entry: Entry, hosts: dict[str, str] | None = None) -> Verdict:
    """Re-hash, then record the result in the catalog and the manifest (a rebuild keeps a bad mark).

    A file that could not be read now (its host is down) marks nothing: the verdict says "not checked"."""
    remote, unknown = in_pool(entry, (hosts or {}).get(entry.host))
    failures = missing(entry) + check_files(store, entry) + remote
    if unknown and not failures:
        return Verdict(entry, [], unknown)
    status = "bad" if failures or entry.status == "bad" else "good"  # bad stays bad: a copy that once lied
    result = "ok" if not failures else "; ".join(failures)[:500]
    stamp = iso_now()
    catalog.mark(entry.id, status, stamp, result)
    try:
        store.update_manifest(entry.id, status=status, verified_at=stamp, verify_result=result)
    except (StoreError, OSError) as e:
        failures.append(f"manifest not updated: {e}")
    entry.status, entry.verified_at, entry.verify_result = status, stamp, result
    return Verdict(entry, failures, unknown)
