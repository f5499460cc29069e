"""Who is in a user group, seen from a terminal: Slack's Web API when a bot token is set, else a plain "cannot".

A grant that names a user group (``S…``) must not quietly match nobody in
``vmbot exec``: with ``SLACK_BOT_TOKEN`` the groups are looked up like the
Slack bot does; without it every lookup fails with a reason, and the policy
puts that reason into the deny it causes.
"""

from __future__ import annotations

from collections.abc import Mapping

from handlers.slack.groups import GroupMembers, slack_groups
from handlers.slack.run import StartupError, client_from_env

NO_TOKEN = "vmbot cannot look up Slack user groups here: set SLACK_BOT_TOKEN (a bot token with usergroups:read)"


class GroupsUnavailable(LookupError):
    """No way to resolve user groups from this front door; the message says what would give one."""


def cannot(why: str) -> GroupMembers:
    def members(group: str) -> set[str]:
        raise GroupsUnavailable(why)

    return members


def terminal_groups(env: Mapping[str, str]) -> GroupMembers:
    """The Web API when ``SLACK_BOT_TOKEN`` is set, otherwise a resolver that says why it cannot."""
    if not env.get("SLACK_BOT_TOKEN"):
        return cannot(NO_TOKEN)
    try:
        return slack_groups(client_from_env(dict(env)))
    except StartupError as e:
        return cannot(f"vmbot cannot look up Slack user groups here: {e}")
