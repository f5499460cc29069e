"""vmbot's domain: fleet, lifecycle operations, audit, config and the CLI.

Nothing in this package imports Slack; the adapters in ``handlers/`` do.
"""

__version__ = "0.1.0"
