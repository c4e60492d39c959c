"""The command registry and the one entry point every front-end calls: `handle()`."""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Union

from bot.clock import utcnow
from bot.config import Config
from bot.errors import StorageBusy, StorageError
from bot.lookup import PaperLookup
from bot.models import CommandRequest, Reply
from bot.text import plural
from storage import Store

log = logging.getLogger(__name__)

MAX_COMMAND_CHARS = 1000


class RateLimiter:
    """At most `limit` commands per user in any 60 seconds (a sliding window).

    The counts live in the database, so the running bot and every `papers-bot command`
    process share them.
    """

    def __init__(self, limit: int, clock: Callable[[], datetime], store: Store):
        self.limit = limit
        self.clock = clock
        self.store = store

    def wait_seconds(self, user: str) -> int:
        """0 if the user may run a command now (and count it), else how long to wait."""
        wait = self.store.record_command(user, self.clock(), self.limit)
        return 0 if wait <= 0 else max(1, math.ceil(wait - 0.001))


@dataclass
class Context:
    store: Store
    config: Config
    clock: Callable[[], datetime] = utcnow
    lookup: PaperLookup | None = None  # for `show` of papers not stored yet
    limiter: RateLimiter | None = field(default=None)

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = RateLimiter(self.config.commands_per_minute, self.clock, self.store)


Handler = Callable[[Context, CommandRequest, str], Union[Reply, Awaitable[Reply]]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    manage: bool  # changes the channel: needs the "manage" right
    func: Handler

    @property
    def summary(self) -> str:
        """First docstring line: what `help` and the platforms' command lists show."""
        return self.details.splitlines()[0]

    @property
    def details(self) -> str:
        doc = inspect.getdoc(self.func)
        if not doc:
            raise TypeError(f"command {self.name!r} has no docstring; help and the command lists need one")
        return doc


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, *, manage: bool = False) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        if not inspect.getdoc(func):
            raise TypeError(f"command {name!r} needs a docstring: it is the user's help")
        COMMANDS[name] = Command(name, usage, manage, func)
        return func

    return register


def error(message: str, cmd: Command | str | None = None) -> Reply:
    """A one-line reason, and the usage of the command when there is one."""
    if isinstance(cmd, str):
        cmd = COMMANDS[cmd]
    text = message if cmd is None else f"{message}\nUsage: `/papers {cmd.usage}`"
    return Reply(text=text, ok=False)


def shown(text: str, limit: int = 40) -> str:
    """User text quoted back in a reply: bounded, one line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def handle(ctx: Context, request: CommandRequest) -> Reply:
    """Run one /papers command. Never raises for bad input: every problem is a Reply.

    A database kept busy by another process past the timeout is a one-line "try again"
    (each write is one transaction: all of it or nothing was written).
    """
    try:
        return await _handle(ctx, request)
    except StorageBusy:
        return Reply(BUSY_REPLY, ok=False)
    except StorageError as exc:
        log.error("command %r failed: %s", shown(request.text, 60), exc)
        return Reply("The bot cannot use its database right now; its operator can see why in the log.", ok=False)


BUSY_REPLY = "The bot's database is busy right now. Try again in a few seconds."


async def _handle(ctx: Context, request: CommandRequest) -> Reply:
    text = request.text.strip()
    if len(text) > MAX_COMMAND_CHARS:
        return error(f"That command is {len(text)} characters long; the limit is {MAX_COMMAND_CHARS}.")
    limiter = ctx.limiter
    assert limiter is not None  # set by Context.__post_init__
    wait = limiter.wait_seconds(request.user_id)
    if wait:
        return error(
            f"You are sending commands too fast: the limit is {limiter.limit} a minute. "
            f"Try again in {plural(wait, 'second')}."
        )
    verb, _, rest = text.partition(" ")
    verb = verb.lower() or "help"
    cmd = COMMANDS.get(verb)
    if cmd is None:
        return error(f"Unknown command `{shown(verb, 30)}`. Try `/papers help`.")
    if cmd.manage and not request.can_manage:
        return error(f"You need the right to manage this channel to use `{cmd.name}`.")
    reply = cmd.func(ctx, request, rest.strip())
    return await reply if inspect.isawaitable(reply) else reply
