"""The command registry and the one entry point every front-end calls: `handle()`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from bot.clock import utcnow
from bot.config import Config
from bot.models import CommandRequest, Reply
from storage import Store

MAX_COMMAND_CHARS = 1000


@dataclass
class Context:
    store: Store
    config: Config
    clock: Callable[[], datetime] = utcnow


Handler = Callable[[Context, CommandRequest, str], Reply]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    manage: bool  # changes the channel: needs the "manage" right
    func: Handler

    @property
    def summary(self) -> str:
        """First docstring line: what `help` and the platforms' command lists show."""
        return inspect.getdoc(self.func).splitlines()[0]

    @property
    def details(self) -> str:
        return inspect.getdoc(self.func)


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, *, manage: bool = False) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        if not inspect.getdoc(func):
            raise TypeError(f"command {name!r} needs a docstring: it is the user's help")
        COMMANDS[name] = Command(name, usage, manage, func)
        return func

    return register


def error(message: str, cmd: Command | None = None) -> Reply:
    text = message if cmd is None else f"{message}\nUsage: `/papers {cmd.usage}`"
    return Reply(text=text, ok=False)


def handle(ctx: Context, request: CommandRequest) -> Reply:
    """Run one /papers command. Never raises for bad input: every problem is a Reply."""
    text = request.text.strip()
    if len(text) > MAX_COMMAND_CHARS:
        return error(f"That command is {len(text)} characters long; the limit is {MAX_COMMAND_CHARS}.")
    verb, _, rest = text.partition(" ")
    verb = verb.lower() or "help"
    cmd = COMMANDS.get(verb)
    if cmd is None:
        shown = verb if len(verb) <= 30 else verb[:30] + "…"
        return error(f"Unknown command `{shown}`. Try `/papers help`.")
    if cmd.manage and not request.can_manage:
        return error(f"You need the right to manage this channel to use `{cmd.name}`.")
    return cmd.func(ctx, request, rest.strip())
