"""Receive a libvirt sparse stream into a file: data written where it belongs, holes skipped, digest on the way.

Why a second thread: the stream's reads (libvirt-python drops the GIL while it
waits for libvirtd) and the file's writes and hashing (``os.pwrite`` and
hashlib drop it too, for large buffers) can overlap. The receiving thread only
queues ``(offset, bytes)``; a writer thread does ``pwrite`` and feeds the
block digest (``bot.backup.digest``), so holes are neither written nor hashed
byte by byte. The queue is bounded, so a slow disk slows the stream instead
of filling memory. Any failure on either side ends both and aborts the stream.

Every ``FLUSH`` bytes written, the writer asks the kernel to start writing
them back and to drop them from the page cache (``posix_fadvise`` DONTNEED):
the fsync that must precede cataloguing then waits only for the tail instead
of the whole file, and a backup of a large disk does not push everything else
out of the bot machine's cache.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import libvirt

from bot.backup.digest import BlockHasher

DEPTH = 64  # chunks in flight (libvirtd sends at most 256 KiB per message: at most 16 MiB queued)
WANT = 256 * 1024  # one RPC message's worth; a larger request only costs libvirt-python a larger buffer
FLUSH = 32 << 20  # start writeback every 32 MiB written


class StreamStopped(Exception):
    """The receiving side was told to stop (``stop()`` said so, or the writer failed)."""


class Writer(threading.Thread):
    """Writes and hashes what the receiving thread queues; ``None`` ends it."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="vmbot-backup-writer", daemon=True)
        self.fd, self.hasher = fd, BlockHasher()
        self.items: queue.Queue[tuple[int, bytes | int] | None] = queue.Queue(DEPTH)
        self.error: BaseException | None = None
        self.unflushed = 0  # bytes written since the last writeback hint
        self.flushed_to = 0  # the file below this offset has been handed to writeback

    def run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is not None:
                continue  # keep draining so the receiver never blocks on a full queue
            offset, what = item
            try:
                if isinstance(what, int):
                    self.hasher.hole(what)
                else:
                    _pwrite_all(self.fd, what, offset)
                    self.hasher.data(what)
                    self._writeback(offset + len(what), len(what))
            except BaseException as e:
                self.error = e

    def _writeback(self, end: int, wrote: int) -> None:
        """Hand what was written so far to writeback (asynchronous: the kernel starts it, nobody waits)."""
        self.unflushed += wrote
        if self.unflushed >= FLUSH and end > self.flushed_to:
            try:
                os.posix_fadvise(self.fd, self.flushed_to, end - self.flushed_to, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass  # only a hint: a filesystem that refuses it still gets the fsync before cataloguing
            self.flushed_to, self.unflushed = end, 0


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def receive(stream: libvirt.virStream, fd: int, stop: Callable[[], bool]) -> str:
    """Drain ``stream`` (already started with a SPARSE_STREAM flag) into ``fd``; return the block digest.

    The file ends where the stream does (a trailing hole becomes its length via ftruncate)."""
    writer = Writer(fd)
    writer.start()
    offset = 0
    try:
        while True:
            if stop() or writer.error is not None:
                raise StreamStopped("cancelled" if writer.error is None else f"writing failed: {writer.error}")
            got = stream.recvFlags(WANT, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
            if got == -3:
                length = stream.recvHole()
                writer.items.put((offset, length))
                offset += length
                continue
            if isinstance(got, int):
                raise libvirt.libvirtError(f"stream receive returned {got}")
            if not got:
                break
            writer.items.put((offset, got))
            offset += len(got)
    except BaseException:
        writer.error = writer.error or StreamStopped("abandoned")  # the writer drops what is still queued
        raise
    finally:
        writer.items.put(None)
        writer.join()
    if writer.error is not None:
        raise writer.error
    os.ftruncate(fd, offset)
    return writer.hasher.hexdigest()
