"""Platform-neutral /papers commands: CommandRequest in, Reply out. No platform SDK here."""
# The import order below is the order `help` lists the commands in.
# ruff: noqa: I001, F401

from . import subscriptions as _subscriptions
from . import lookup as _lookup
from . import channel as _channel
from . import followups as _followups
from . import people as _people
from . import help as _help
from .base import COMMANDS, Args, Command, Context, Param, RateLimiter, handle, parse_text, request_from_text
from .chat import complete, mention_request, paper_in_link, paper_links, show_request
from .subscriptions import subscribe_form

__all__ = ["COMMANDS", "Args", "Command", "Context", "Param", "RateLimiter", "complete", "handle",
           "mention_request", "paper_in_link", "paper_links", "parse_text", "request_from_text", "show_request",
           "subscribe_form"]
