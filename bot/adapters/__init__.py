"""Platform adapters: the only code that knows a chat platform.

An adapter turns a Card into the platform's message and posts it; it turns platform
events into CommandRequests. Nothing platform-specific leaves this package.

`Adapter` is everything the rest of the bot may use of one; `build_adapters` makes them
from the config (console always, Slack and Discord when their tokens are set), so the app
never names an adapter class nor looks inside one.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol, TextIO, runtime_checkable

from ..models import Card, ChannelRef, CommandRequest, Digest, PostResult, Reply, ThreadRef, ThreadReply
from .console import ConsoleAdapter

if TYPE_CHECKING:
    from ..config import Config
    from .slack_oauth import InstallationRecords

CommandHandler = Callable[[CommandRequest], Awaitable[Reply]]
# (channel, verb, parameter, typed so far) -> suggestions as (label, value): handlers.complete
Completer = Callable[[ChannelRef, str, str, str], list[tuple[str, str]]]


class Running:
    """Something `run` started (a server, a socket, a gateway) and must stop at the end."""

    def __init__(self, close: Callable[[], Awaitable[None]], frontend: object | None = None):
        self.close = close
        self.frontend = frontend  # what runs behind it, for tests and status


@runtime_checkable
class Adapter(Protocol):
    """One chat platform, as the app and the dispatcher see it (and nothing more)."""

    platform: str  # the ChannelRef platform it posts to: "console", "slack", "discord"

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        """Send one card to one channel. Platform refusals are PostResult(ok=False); bugs raise."""
        ...

    async def post_digest(self, digest: Digest) -> PostResult:
        """Send many papers as one message."""
        ...

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        """Send a short notice (ours, but it may quote outside text: escape it)."""
        ...

    async def post_in_thread(self, thread: ThreadRef, reply: ThreadReply) -> PostResult:
        """Reply in the thread of a message the bot posted (a card): on Slack in its thread
        (thread_ts), on Discord a reply to it. `reply.text` is plain: escape it. Mentions never ping."""
        ...

    async def find_in_thread(self, thread: ThreadRef, reply: ThreadReply, since: datetime) -> str | None:
        """The id of our own `reply` (known by its key) in `thread`, sent since `since`, or None.

        After a crash mid-send this tells a reply that went out from one that did not; None
        also where the platform cannot tell (the console): it is sent again."""
        ...

    async def find_sent(self, channel: ChannelRef, paper_id: str, since: datetime) -> str | None:
        """The id of our own message about `paper_id` sent to `channel` since `since`, or None.

        After a crash mid-send this tells a message that went out from one that did not.
        None also where the platform cannot tell (the console): the paper is sent again."""
        ...

    async def start(self, on_command: CommandHandler) -> Running | None:
        """Start the platform's front-end (/papers commands and the like), answering with on_command.

        Returns at once, connecting in the background (a Running to stop it), or None when
        there is no front-end to start (the console; a platform without its settings)."""
        ...

    async def close(self) -> None:
        """Let go of connections and sessions; posting after close may reconnect."""
        ...


def build_adapters(
    config: Config,
    *,
    stdout: TextIO | None = None,
    complete: Completer | None = None,
    installations: InstallationRecords | None = None,
) -> dict[str, Adapter]:
    """The adapters the config asks for, by platform: console always, Slack with
    SLACK_BOT_TOKEN (or, with [slack] client_id, the workspaces that installed the app, kept in
    `installations`: the Store), Discord with DISCORD_TOKEN (each SDK imported only then).

    `complete` answers the Discord command group's autocomplete (handlers.complete through
    the app); `stdout` is the console's. Raises ConfigError (one line) when distribution's
    client secret or token key is missing, or the key does not open the stored tokens."""
    adapters: dict[str, Adapter] = {"console": ConsoleAdapter(stdout)}
    token = config.secrets.get("SLACK_BOT_TOKEN")
    if config.slack.distribution and installations is not None:
        from ..errors import ConfigError
        from .slack_adapter import SlackAdapter, make_web_client
        from .slack_oauth import CLIENT_SECRET_ENV, KEY_ENV, Sealer, Workspaces

        if not config.secrets.get(CLIENT_SECRET_ENV):
            raise ConfigError(f"Slack distribution ([slack] client_id is set) needs {CLIENT_SECRET_ENV} in the "
                              "environment (the app's Client Secret, Basic Information -> App Credentials)")
        workspaces = Workspaces(installations, Sealer(config.secrets.get(KEY_ENV)), config.slack.api_url)
        workspaces.check_key()
        adapters["slack"] = SlackAdapter(make_web_client(None, config.slack.api_url), config=config,
                                         workspaces=workspaces)
    elif token:
        from .slack_adapter import SlackAdapter, make_web_client

        adapters["slack"] = SlackAdapter(make_web_client(token, config.slack.api_url), config=config)
    token = config.secrets.get("DISCORD_TOKEN")
    if token:
        from .discord_adapter import DiscordAdapter

        adapters["discord"] = DiscordAdapter(token, api_base=config.discord.api_base, config=config,
                                             complete=complete,
                                             global_limit=(config.discord.requests_per_second, 1.0))
    return adapters


# A platform that refuses the bot's token cannot be posted to until someone fixes the token
# (and restarts the bot): its papers wait in the outbox, tried again this often, never given up.
TOKEN_REFUSED_WAIT = 900.0


__all__ = [
    "TOKEN_REFUSED_WAIT", "Adapter", "CommandHandler", "Completer", "ConsoleAdapter", "Running", "build_adapters",
]
