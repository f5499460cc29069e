"""libvirt's errors as the one line a user reads: one helper, so every path says them the same way."""

from __future__ import annotations

import libvirt


def error_text(e: Exception, limit: int = 0) -> str:
    """What a user is told about a libvirt error or a host that does not answer: libvirt's words, one line.

    With a limit (a host's down reason, a console note), a long message keeps its innermost cause.
    """
    text = (e.get_error_message() or str(e)) if isinstance(e, libvirt.libvirtError) else str(e)
    text = text.strip().split("\n")[0]
    return gist(text, limit) if limit else text


def gist(text: str, limit: int = 120) -> str:
    """libvirt nests causes as "a: b: c"; past ``limit`` characters keep the innermost one ("Connection refused")."""
    return text.split(": ")[-1][:limit] if len(text) > limit else text
