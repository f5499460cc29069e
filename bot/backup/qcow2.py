"""Just enough qcow2 to rebuild a disk from a chain of backups: which clusters a file holds, and where.

An incremental push backup is a qcow2 file holding only the clusters that
changed since its checkpoint (the rest unallocated). Restoring it means laying
the full backup down and then every increment over it, in order. That needs no
qemu-img on the bot's machine, only the L1/L2 tables: allocated clusters are
copied, clusters marked "reads as zero" are zeroed, the rest is left alone.
Compressed clusters, encryption, external data files and extended L2 entries
are refused: QEMU's backup job writes none of them. A backing file is ignored:
QEMU names the source disk as the backing of an incremental target, and what
the chain means is exactly "this file's clusters over the ones before it".
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
ZERO = 1
BAD_FEATURES = (1 << 2) | (1 << 4)  # external data file, extended L2


class Qcow2Error(Exception):
    """Not a qcow2 file this reader can rebuild from; the message says what it found."""


@dataclass(frozen=True)
class Header:
    cluster_size: int
    size: int  # the disk's virtual size in bytes
    l1_size: int
    l1_offset: int


def header(f) -> Header:
    raw = f.read(104)
    if raw[:4] != MAGIC:
        raise Qcow2Error("not a qcow2 file")
    version, backing, _, bits, size, crypt, l1_size, l1_offset = struct.unpack(">IQIIQIIQ", raw[4:48])
    features = struct.unpack(">Q", raw[72:80])[0] if version >= 3 else 0
    del backing  # an incremental target names the source disk as its backing file; only its own clusters count
    if crypt or features & BAD_FEATURES or not 9 <= bits <= 21:
        raise Qcow2Error("a qcow2 file with encryption or features this reader does not handle")
    return Header(1 << bits, size, l1_size, l1_offset)


def standalone(path: str) -> None:
    """A disk vmbot puts into a pool names no other file: QEMU opens a qcow2's backing file or external data
    file when the VM starts, as whatever path its header says (any host file, as the hypervisor's user)."""
    with open(path, "rb") as f:
        raw = f.read(104)
    if raw[:4] != MAGIC:
        raise Qcow2Error("has no qcow2 header")
    version, backing_offset, backing_size = struct.unpack(">IQI", raw[4:20])
    if backing_offset or backing_size:
        raise Qcow2Error("names a backing file")
    if version >= 3 and struct.unpack(">Q", raw[72:80])[0] & (1 << 2):
        raise Qcow2Error("names an external data file")


def clusters(path: str) -> Iterator[tuple[int, int | None, int]]:
    """(guest offset, file offset or None for a zero cluster, length) for every cluster the file defines."""
    with open(path, "rb") as f:
        h = header(f)
        per_l2 = h.cluster_size // 8
        f.seek(h.l1_offset)
        l1 = struct.unpack(f">{h.l1_size}Q", f.read(8 * h.l1_size))
        for i, l1e in enumerate(l1):
            table = l1e & OFFSET_MASK
            if not table:
                continue
            f.seek(table)
            for j, l2e in enumerate(struct.unpack(f">{per_l2}Q", f.read(h.cluster_size))):
                guest = (i * per_l2 + j) * h.cluster_size
                if guest >= h.size:
                    return
                if l2e & COMPRESSED:
                    raise Qcow2Error("compressed clusters are not handled")
                if l2e & ZERO:
                    yield guest, None, min(h.cluster_size, h.size - guest)
                elif l2e & OFFSET_MASK:
                    yield guest, l2e & OFFSET_MASK, min(h.cluster_size, h.size - guest)


def virtual_size(path: str) -> int:
    with open(path, "rb") as f:
        return header(f).size


def rebuild(chain: list[str], out: str) -> None:
    """Lay the full backup, then each increment, into a new sparse raw file of the disk's size (0600)."""
    size = virtual_size(chain[0])
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        for path in chain:
            if virtual_size(path) != size:
                raise Qcow2Error("the backups of this chain are of disks of different sizes")
            with open(path, "rb") as src:
                for guest, offset, length in clusters(path):
                    if offset is None:
                        os.pwrite(fd, bytes(length), guest)
                    else:
                        src.seek(offset)
                        os.pwrite(fd, src.read(length), guest)
        os.fsync(fd)
    finally:
        os.close(fd)
