"""Platform-neutral /papers commands: CommandRequest in, Reply out. No platform SDK here."""

from . import subscriptions as _subscriptions  # noqa: F401  (importing registers the commands)
from . import help as _help  # noqa: F401, I001
from .base import COMMANDS, Command, Context, handle

__all__ = ["COMMANDS", "Command", "Context", "handle"]
