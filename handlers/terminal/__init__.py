"""The terminal front door: the interactive shell, one-shot exec, and who the Unix user is."""
