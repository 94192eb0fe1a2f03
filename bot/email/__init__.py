"""Email surface: inbound SMTP, parsing of forwards and replies, replies that keep the thread."""

from bot.email.inbound import InboundMail, InboundServer, start_inbound
from bot.email.mirror import mirror_thread, progress_milestone
from bot.email.parse import MailError, ParsedEmail, parse_email

__all__ = ["InboundMail", "InboundServer", "MailError", "ParsedEmail", "mirror_thread",
           "parse_email", "progress_milestone", "start_inbound"]
