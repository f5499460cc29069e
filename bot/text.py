"""Text from outside that may not be UTF-8: a terminal passes bytes through as surrogates."""

from __future__ import annotations


def printable(text: str) -> str:
    """Text that can be printed and stored: bytes that were not UTF-8 (surrogates) become \\udcXX."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
