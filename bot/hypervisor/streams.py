"""libvirt streams that never outlive a failure: one place for the abort every stream user needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import libvirt


@contextmanager
def aborted_on_error(stream: libvirt.virStream) -> Iterator[libvirt.virStream]:
    """Abort the stream if the block fails (its own error wins), so libvirtd frees the transfer at once
    instead of holding the volume or the screen until the connection closes."""
    try:
        yield stream
    except BaseException:
        with suppress(libvirt.libvirtError):
            stream.abort()
        raise
