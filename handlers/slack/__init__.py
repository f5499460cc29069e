"""The Slack front door: Bolt listeners, Block Kit, approval messages, App Home, the HTTP server, metrics, manifest."""
