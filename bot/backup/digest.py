"""The checksum of a disk file: sha256 over the sha256 of each 1 MiB block, so holes cost nothing.

Why not a plain sha256 of the file: a 1 TiB disk with 10 GiB of data would
hash a terabyte of zeros, at every backup and every verify, and SHA-256 has no
shortcut for a run of zeros (each block's state depends on all before it).
Hashing each 1 MiB block on its own lets a block that lies in a hole use a
constant (the sha256 of 1 MiB of zeros, computed once), and it is still a
well-defined function of the logical content alone, whatever the layout of
holes on either side:

    blocks  = the file's bytes (holes read as zeros) cut into 1 MiB blocks, the last one shorter
    digest  = sha256( sha256(block 0) || sha256(block 1) || ... )          # raw 32-byte digests

(the construction of Dropbox's content hash, with 1 MiB blocks). An empty file
has no blocks: the digest is sha256 of nothing. A manifest names it as
``"checksum": "sha256-1MiB-blocks"`` beside the ``sha256`` value; files with no
``checksum`` key (config files, older backups) carry a plain sha256 of the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from bot.backup.files import sha256_file

BLOCK = 1 << 20
KIND = "sha256-1MiB-blocks"
PLAIN = "sha256"
ZEROS = bytes(BLOCK)
ZERO_BLOCK = hashlib.sha256(ZEROS).digest()


class BlockHasher:
    """Feed data and holes in order (any sizes); whole blocks inside a hole are never hashed."""

    def __init__(self) -> None:
        self.outer = hashlib.sha256()
        self.block = hashlib.sha256()
        self.filled = 0  # bytes of the current block seen so far

    def data(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            take = min(len(view), BLOCK - self.filled)
            self.block.update(view[:take])  # hashlib drops the GIL for large buffers
            view = view[take:]
            self._advance(take)

    def hole(self, length: int) -> None:
        while length:
            if self.filled == 0 and length >= BLOCK:
                whole = length // BLOCK
                self.outer.update(ZERO_BLOCK * whole)
                length -= whole * BLOCK
                continue
            take = min(length, BLOCK - self.filled)
            self.block.update(memoryview(ZEROS)[:take])
            length -= take
            self._advance(take)

    def _advance(self, n: int) -> None:
        self.filled += n
        if self.filled == BLOCK:
            self.outer.update(self.block.digest())
            self.block, self.filled = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        outer = self.outer.copy()
        if self.filled:
            outer.update(self.block.digest())
        return outer.hexdigest()


def file_digest(path: Path | str) -> str:
    """The block digest of a file on disk, holes found with SEEK_DATA/SEEK_HOLE (read as zeros if not)."""
    hasher = BlockHasher()
    with open(path, "rb", buffering=0) as f:
        size, pos = os.fstat(f.fileno()).st_size, 0
        while pos < size:
            data, end = _section(f.fileno(), pos, size)
            if not data:
                hasher.hole(end - pos)
                pos = end
                continue
            f.seek(pos)
            while pos < end:
                chunk = f.read(min(4 * BLOCK, end - pos))
                if not chunk:
                    raise OSError(f"{path}: shorter than its size")
                hasher.data(chunk)
                pos += len(chunk)
    return hasher.hexdigest()


def _section(fd: int, pos: int, size: int) -> tuple[bool, int]:
    """(is data, where the section ends) from ``pos``; a filesystem without SEEK_DATA has no holes."""
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # only a hole remains
            return False, size
        return True, size  # EINVAL: no SEEK_DATA here; read it all
    if data > pos:
        return False, min(data, size)
    return True, min(os.lseek(fd, pos, os.SEEK_HOLE), size)


def checksum(path: Path | str, kind: str = PLAIN) -> str:
    """Recompute a manifest's checksum of ``path`` as the manifest names it (``kind``)."""
    if kind == KIND:
        return file_digest(path)
    if kind != PLAIN:
        raise ValueError(f"unknown checksum {kind!r}")
    return sha256_file(path)
