"""The Slack surface (ARCHITECTURE.md, "The flow"): requests, previews, approvals, live
progress and results in a Slack thread, driven by the same conversation code as the console."""

from bot.slack.blocks import message_payload, plan_blocks
from bot.slack.surface import SlackSurface

__all__ = ["SlackSurface", "message_payload", "plan_blocks"]
