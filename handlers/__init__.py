"""Chat adapters: Slack (Bolt) over the chat-agnostic command layer in bot/."""
