"""The approval workflow (ask, vote, re-check, run once) and the previews it shows."""
