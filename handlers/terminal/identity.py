"""Who the terminal acts as. Nobody acts as someone else unless the config says so."""

from __future__ import annotations

import getpass

from bot.config import Config
from bot.policy import USER_ID

DEMO_USER = "U0DEMO"


class IdentityError(Exception):
    """The terminal may not act as the requested user; the message says why."""


def terminal_user(config: Config, requested: str | None) -> str:
    """The Slack ID for this terminal: free on the demo, mapped or refused on a real config."""
    if requested is not None and not USER_ID.match(requested):
        raise IdentityError(f"'{requested}' is not a Slack user ID (like U0123ABCD)")
    if config.demo:
        return requested or DEMO_USER
    if requested is not None:
        if not config.allow_as:
            raise IdentityError(f"acting as {requested} is refused: [terminal] allow_as is not set in {config.source}")
        return requested
    unix = unix_user()
    mapped = config.terminal_users.get(unix)
    if not mapped:
        raise IdentityError(f"Unix user '{unix}' has no Slack ID in [terminal] users of {config.source}")
    if not USER_ID.match(mapped):
        raise IdentityError(f"[terminal] users maps '{unix}' to '{mapped}', which is not a Slack user ID")
    return mapped


def unix_user() -> str:
    return getpass.getuser()
