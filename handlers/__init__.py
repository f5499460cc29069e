"""The front doors over the chat-agnostic command layer in bot/: the `vmbot` CLI, the terminal and Slack."""
