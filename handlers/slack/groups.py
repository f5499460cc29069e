"""User-group membership from Slack's Web API, handed to the policy when it is built."""

from __future__ import annotations

from collections.abc import Callable

from slack_sdk import WebClient

GroupMembers = Callable[[str], set[str]]


def slack_groups(client: WebClient) -> GroupMembers:
    """``usergroups.users.list`` (needs the usergroups:read scope); the policy caches the answer and fails closed."""

    def members(group: str) -> set[str]:
        return set(client.usergroups_users_list(usergroup=group)["users"])

    return members
