"""Slack bot and composition root: the runtime behind `ticketbot run`, the CLI, Slack delivery and scheduling."""
