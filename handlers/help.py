"""help: usage built from the handlers' docstrings."""

from __future__ import annotations

from bot.models import CommandRequest, Reply

from .base import COMMANDS, Args, Context, Param, command, error, shown


@command("help", "help [command]", Param("command", "a command to explain"))
def help_command(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """List the commands, or explain one.

    Example: `/papers help subscribe`.
    """
    name = args.text("command").lower()
    if name:
        cmd = COMMANDS.get(name)
        if cmd is None:
            return error(f"There is no command `{shown(name, 30)}`. Try `/papers help`.")
        return Reply(f"`/papers {cmd.usage}`\n{cmd.details}")
    lines = ["papers-bot posts new machine-learning papers that match this channel's subscriptions.", ""]
    lines += [f"`/papers {cmd.usage}` · {cmd.summary}" for cmd in COMMANDS.values()]
    return Reply("\n".join(lines))
