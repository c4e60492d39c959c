"""Platform-neutral /papers commands: CommandRequest in, Reply out. No platform SDK here."""

# Importing the command modules registers their commands, in the order `help` lists them.
from . import channel as _channel  # noqa: F401, I001
from . import help as _help  # noqa: F401, I001
from . import lookup as _lookup  # noqa: F401, I001
from . import subscriptions as _subscriptions  # noqa: F401
from .base import COMMANDS, Command, Context, RateLimiter, handle

__all__ = ["COMMANDS", "Command", "Context", "RateLimiter", "handle"]
