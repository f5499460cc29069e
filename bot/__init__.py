"""vmbot's domain: commands, policy interface, hypervisor access, storage, approvals and the one command path.

Nothing in this package imports Slack or the front doors in ``handlers/``.
"""

__version__ = "0.1.0"
