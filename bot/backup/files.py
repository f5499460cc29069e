"""The backup store on disk: one private folder per backup set, written so a crash leaves nothing "good".

A set is built in ``.tmp-<id>/`` and only renamed to ``<id>/`` once every file
and the manifest are written and fsynced; the catalog row comes after the
rename. A crash at any point leaves either a ``.tmp-`` folder (swept at the
next start) or a complete set whose manifest can rebuild its catalog row.
Folders and files are named by catalog id and VM UUID, never by VM name: a VM
may be called ``..`` or ``a/b``. Everything is 0700 / 0600 whatever the umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SET_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}\Z")
FILE_NAME = re.compile(r"\A[0-9A-Za-z][0-9A-Za-z._-]{0,120}\Z")  # \Z, not $: no final newline
MANIFEST = "manifest.json"
TMP = ".tmp-"
CHUNK = 1 << 20


class BackupError(Exception):
    """A backup did not complete; nothing from it is cataloged. The message says why."""


class StoreError(BackupError):
    """The backup store cannot be used (missing, not private, or a file is not what the manifest says)."""


def new_id(now: float | None = None) -> str:
    """Sortable by time, unique, and safe as a folder name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


def private_dir(path: Path) -> Path:
    """Create (or tighten) a 0700 folder; the mode is set explicitly, so the umask does not matter."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Stored:
    """One file of a set, as the manifest records it."""

    name: str
    role: str  # "xml", "meta", "disk"
    size: int
    sha256: str
    extra: dict | None = None  # disk: target, format, allocated bytes
    checksum: str = "sha256"  # what ``sha256`` is the sha256 of: the file, or its blocks' (bot.backup.digest)

    def as_dict(self) -> dict:
        out = {"name": self.name, "role": self.role, "size": self.size, "sha256": self.sha256}
        out |= {"checksum": self.checksum} if self.checksum != "sha256" else {}
        return out | ({"extra": self.extra} if self.extra else {})


class SetWriter:
    """Files of one set being written into its temporary folder; ``commit`` makes it real."""

    def __init__(self, root: Path, set_id: str) -> None:
        self.root, self.id = root, set_id
        self.tmp = private_dir(root / f"{TMP}{set_id}")
        self.files: list[Stored] = []

    def path(self, name: str) -> Path:
        if not FILE_NAME.match(name) or name == MANIFEST:
            raise StoreError(f"refusing file name {name!r} in a backup set")
        return self.tmp / name

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """A new 0600 file, fsynced on close."""
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())

    def add(self, name: str, data: bytes, role: str) -> Stored:
        with self.open(name) as f:
            f.write(data)
        return self.record(name, role)

    def record(
        self, name: str, role: str, extra: dict | None = None, sha256: str | None = None, checksum: str = "sha256"
    ) -> Stored:
        """List a file of the set in the manifest: hashed now, or with the checksum computed while it was written
        (``checksum`` names which: a plain sha256, or bot.backup.digest's block digest for disks)."""
        path = self.path(name)
        stored = Stored(name, role, path.stat().st_size, sha256 or sha256_file(path), extra, checksum)
        self.files.append(stored)
        return stored

    def listed(self, stored: Stored) -> Stored:
        """List a file that lives outside the folder (a disk kept in the host's pool: bot.backup.inpool)."""
        self.files.append(stored)
        return stored

    def commit(self, manifest: dict) -> Path:
        """Write the manifest, fsync, rename the folder into place; only then may the catalog name it."""
        manifest = manifest | {"id": self.id, "files": [f.as_dict() for f in self.files]}
        write_json(self.tmp / MANIFEST, manifest)
        fsync_dir(self.tmp)
        final = self.root / self.id
        os.rename(self.tmp, final)
        fsync_dir(self.root)
        return final

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    """Atomically (temp name, fsync, rename) write a 0600 JSON file."""
    tmp = path.with_name(f"{TMP}{path.name}-{secrets.token_hex(3)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """The ``[backups] dir`` folder: sets by id, their manifests, leftovers of crashed runs."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(Path(root))

    def writer(self, set_id: str | None = None) -> SetWriter:
        return SetWriter(self.root, set_id or new_id())

    def set_dir(self, set_id: str) -> Path:
        if not SET_ID.match(set_id):
            raise StoreError(f"{set_id!r} is not a backup id")
        if (self.root / set_id).is_symlink():  # a link out of the store: its files are not the store's
            raise StoreError(f"backup {set_id}: its folder is a link; not trusted")
        return self.root / set_id

    def manifest(self, set_id: str) -> dict:
        try:
            data = json.loads((self.set_dir(set_id) / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"backup {set_id}: cannot read its manifest ({e.__class__.__name__})") from None
        if not isinstance(data, dict) or data.get("id") != set_id:
            raise StoreError(f"backup {set_id}: its manifest names another backup")
        return data

    def file(self, set_id: str, name: str) -> Path:
        if not FILE_NAME.match(name) or name == MANIFEST:
            raise StoreError(f"backup {set_id}: refusing file name {name!r}")
        path = self.set_dir(set_id) / name
        if path.is_symlink():
            raise StoreError(f"backup {set_id}: {name} is a link; not trusted")
        return path

    def update_manifest(self, set_id: str, **fields: object) -> None:
        write_json(self.set_dir(set_id) / MANIFEST, self.manifest(set_id) | fields)

    def ids(self) -> list[str]:
        """Every complete set on disk, oldest first (a link is no set: it points out of the store)."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and SET_ID.match(p.name))

    def sweep(self) -> list[str]:
        """Remove what crashed runs left (``.tmp-`` folders and files): never cataloged, never good."""
        gone = []
        for p in self.root.iterdir():
            if p.name.startswith(TMP):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p.name)
        return gone

    def remove(self, set_id: str) -> None:
        """Rename first (atomic: the set stops existing at once), then delete."""
        path = self.set_dir(set_id)
        doomed = self.root / f"{TMP}gone-{set_id}"
        os.rename(path, doomed)
        shutil.rmtree(doomed)
