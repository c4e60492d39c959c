"""Platform adapters: the only code that knows a chat platform.

An adapter turns a Card into the platform's message and posts it; it turns platform
events into CommandRequests. Nothing platform-specific leaves this package.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol

from ..models import Card, ChannelRef, Digest, PostResult
from .console import ConsoleAdapter


class Adapter(Protocol):
    platform: str

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        """Send one card to one channel. Platform refusals are PostResult(ok=False); bugs raise."""
        ...

    async def post_digest(self, digest: Digest) -> PostResult:
        """Send many papers as one message."""
        ...

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        """Send a short notice (ours, but it may quote outside text: escape it)."""
        ...


# A platform that refuses the bot's token cannot be posted to until someone fixes the token
# (and restarts the bot): its papers wait in the outbox, tried again this often, never given up.
TOKEN_REFUSED_WAIT = 900.0


class Running:
    """Something `run` started (a server, a socket, a gateway) and must stop at the end."""

    def __init__(self, close: Callable[[], Awaitable[None]], frontend: object | None = None):
        self.close = close
        self.frontend = frontend  # what runs behind it, for tests and status


__all__ = ["TOKEN_REFUSED_WAIT", "Adapter", "ConsoleAdapter", "Running"]
