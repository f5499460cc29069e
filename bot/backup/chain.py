"""An incremental disk backup restores through its chain: the full backup, then every increment, in order.

The disks are rebuilt into a private temporary folder of the store (swept at
start if the bot dies meanwhile), handed to restore as raw files, and removed
afterwards. A missing or bad link refuses the restore: a chain is only as good
as its weakest backup.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from bot.backup import qcow2
from bot.backup.catalog import Catalog, Entry
from bot.backup.files import TMP, Store, StoreError, private_dir
from bot.backup.restore import DiskData, disk_files


@contextmanager
def rebuilt(store: Store, catalog: Catalog, entry: Entry) -> Iterator[DiskData | None]:
    """None for a self-contained set; for an increment, its disks rebuilt from the whole chain."""
    if not entry.parent:
        yield None
        return
    chain = catalog.chain(entry)
    bad = [e.id for e in chain if not e.good]
    if bad:
        raise StoreError(f"backup {entry.id} builds on {', '.join(bad)}, marked bad; restore an older full backup")
    tmp = private_dir(store.root / f"{TMP}rebuild-{entry.id}-{secrets.token_hex(3)}")
    try:
        per_set = [disk_files(store, e) for e in chain]
        out: DiskData = {}
        for index in per_set[-1]:
            files = [found[index] for found in per_set if index in found]
            if len(files) != len(chain) or any(fmt != "qcow2" for _, fmt in files):
                raise StoreError(f"backup {entry.id}: disk {index} is not in every backup of its chain")
            target = tmp / f"disk{index}.img"
            try:
                qcow2.rebuild([path for path, _ in files], str(target))
            except (qcow2.Qcow2Error, OSError) as e:
                raise StoreError(f"backup {entry.id}: disk {index} cannot be rebuilt: {e}") from None
            out[index] = (str(target), "raw")
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
