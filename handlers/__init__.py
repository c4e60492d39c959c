"""Platform-neutral /papers commands: CommandRequest in, Reply out. No platform SDK here."""
# The import order below is the order `help` lists the commands in.
# ruff: noqa: I001, F401

from . import subscriptions as _subscriptions
from . import lookup as _lookup
from . import channel as _channel
from . import help as _help
from .base import COMMANDS, Command, Context, RateLimiter, handle

__all__ = ["COMMANDS", "Command", "Context", "RateLimiter", "handle"]
