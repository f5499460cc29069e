"""Backups: config and disk backup sets, their catalog, retention, verify and restore."""

CATALOG_ACTIONS = frozenset({"restore", "prune"})  # approved actions whose targets are catalog entries, not live VMs
