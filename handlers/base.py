"""The command registry and the one entry point every front-end calls: `handle()`."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Awaitable, Callable, Literal, Mapping, Union

from bot.clock import utcnow
from bot.config import Config
from bot.errors import StorageBusy, StorageError
from bot.lookup import PaperLookup
from bot.models import ArgValue, ChannelRef, CommandRequest, Reply
from bot.text import plural
from storage import StoreContract

if TYPE_CHECKING:
    from bot.recommend import Recommender

log = logging.getLogger(__name__)

MAX_COMMAND_CHARS = 1000


class RateLimiter:
    """At most `limit` commands per user in any 60 seconds (a sliding window).

    The counts live in the database, so the running bot and every `papers-bot command`
    process share them.
    """

    def __init__(self, limit: int, clock: Callable[[], datetime], store: StoreContract):
        self.limit = limit
        self.clock = clock
        self.store = store

    async def wait_seconds(self, user: str) -> int:
        """0 if the user may run a command now (and count it), else how long to wait.

        Counted in a worker thread when the store allows: the count is a write, which waits
        its turn behind the transaction under way (a poll's writer thread writes one after
        another), and the loop must not wait with it (docs/benchmarks.md, "Bursts and due
        channels off the loop")."""
        if self.store.reads_off_loop():
            wait = await asyncio.to_thread(self.store.record_command, user, self.clock(), self.limit)
        else:
            wait = self.store.record_command(user, self.clock(), self.limit)
        return 0 if wait <= 0 else max(1, math.ceil(wait - 0.001))


@dataclass
class Context:
    store: StoreContract
    config: Config
    clock: Callable[[], datetime] = utcnow
    lookup: PaperLookup | None = None  # for `show` of papers not stored yet
    recommender: Recommender | None = None  # like: queries; the poller's (None: one made on first use)
    limiter: RateLimiter | None = field(default=None)

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = RateLimiter(self.config.commands_per_minute, self.clock, self.store)


Kind = Literal["text", "word", "int", "flag"]


@dataclass(frozen=True)
class Param:
    """One declared argument of a command: what Discord offers as an option, what text maps to.

    kind: "text" is free text, "word" one word (or, last, the rest of the line), "int" a whole
    number within minimum..maximum, "flag" an option without a value (`--me`). `choices` are
    offered by Discord; the handler still checks text. `option`: in text it is `--name value`,
    anywhere. `missing`: the reply when a required value is absent (None: the handler explains
    it). `complete`: the completion source (see handlers.complete) a platform may offer while typing.
    """

    name: str
    description: str
    kind: Kind = "word"
    required: bool = False
    choices: tuple[str, ...] = ()
    option: bool = False
    minimum: int | None = None
    maximum: int | None = None
    missing: str | None = None
    complete: str | None = None

    @property
    def label(self) -> str:
        return self.flag if self.option else self.name

    @property
    def flag(self) -> str:
        """How an option is written in text: `--min-score` for `min_score` (names are identifiers)."""
        return "--" + self.name.replace("_", "-")


class Args:
    """A command's arguments after handle() checked them against its parameters."""

    def __init__(self, values: Mapping[str, ArgValue]):
        self._values = dict(values)

    def text(self, name: str) -> str:
        """The value as text, stripped; "" when it was not given."""
        value = self._values.get(name)
        return "" if value is None else str(value).strip()

    def number(self, name: str) -> int | None:
        value = self._values.get(name)
        return value if isinstance(value, int) else None

    def flag(self, name: str) -> bool:
        """True when the flag (`--me`) was given."""
        return name in self._values

    def __contains__(self, name: object) -> bool:
        return name in self._values


Handler = Callable[[Context, CommandRequest, Args], Union[Reply, Awaitable[Reply]]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    manage: bool  # changes the channel: needs the "manage" right
    func: Handler
    params: tuple[Param, ...] = ()
    open_with: str | None = None  # a flag (`--me`) that lets anyone run it: the command then checks itself

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

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, *params: Param, manage: bool = False,
            open_with: str | None = None) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        if not inspect.getdoc(func):
            raise TypeError(f"command {name!r} needs a docstring: it is the user's help")
        if len({p.name for p in params}) != len(params):
            raise TypeError(f"command {name!r} declares a parameter twice")
        if open_with is not None and not any(p.name == open_with and p.kind == "flag" for p in params):
            raise TypeError(f"command {name!r}: open_with must name one of its flags")
        COMMANDS[name] = Command(name, usage, manage, func, params, open_with)
        return func

    return register


def error(message: str, cmd: Command | str | None = None) -> Reply:
    """A one-line reason, and the usage of the command when there is one."""
    if isinstance(cmd, str):
        cmd = COMMANDS[cmd]
    text = message if cmd is None else f"{message}\nUsage: `/papers {cmd.usage}`"
    return Reply(text=text, ok=False)


def visible(text: str) -> str:
    """Typed text without the characters nobody sees: zero-width spaces and joiners, soft
    hyphens, direction marks, byte-order marks and other control characters (whitespace
    stays). Text pasted from a web page or a PDF carries them; the sources drop them from
    titles and abstracts (bot.sources.base.clean_text), so a query keeping one inside a
    word (`diff<U+200B>usion`, the phrase "diff usion") could never match, and a time zone
    or an id with one was refused while reading exactly like the right one."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c for c in text if c in "\n\t " or unicodedata.category(c)[0] != "C")


def shown(text: str, limit: int = 40) -> str:
    """User text quoted back in a reply: bounded, one line, and without backticks, which would
    end the code span it is quoted in (`search `x` **y**` made the rest of the line markdown)."""
    text = " ".join(text.replace("`", "\u2019").split())
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
        log.error("command %r failed: %s", shown(described(request), 60), exc)
        return Reply("The bot cannot use its database right now; its operator can see why in the log.", ok=False)


BUSY_REPLY = "The bot's database is busy right now. Try again in a few seconds."


def described(request: CommandRequest) -> str:
    """The command as typed, or its verb and arguments: for logs."""
    if request.text:
        return request.text
    return " ".join([request.verb] + [f"{name}={value}" for name, value in request.args.items()])


async def _handle(ctx: Context, request: CommandRequest) -> Reply:
    size = max(len(request.text.strip()), len(request.verb) + sum(len(str(v)) + 1 for v in request.args.values()))
    if size > MAX_COMMAND_CHARS:
        return error(f"That command is {size} characters long; the limit is {MAX_COMMAND_CHARS}.")
    limiter = ctx.limiter
    assert limiter is not None  # set by Context.__post_init__
    # A form's live preview is not a command typed: the adapter sends at most one at a time per user.
    live = request.live_preview and request.verb == "preview"
    wait = 0 if live else await limiter.wait_seconds(request.user_id)
    if wait:
        return error(
            f"You are sending commands too fast: the limit is {limiter.limit} a minute. "
            f"Try again in {plural(wait, 'second')}."
        )
    cmd = COMMANDS.get(request.verb)
    if cmd is None:
        return error(f"Unknown command `{shown(request.verb, 30)}`. Try `/papers help`.")
    if cmd.manage and not request.can_manage and not _flagged(request, cmd.open_with):
        return error(f"You need the right to manage this channel to use `{cmd.name}`.")
    args = checked(cmd, request.args)
    if isinstance(args, Reply):
        return args
    reply = cmd.func(ctx, request, args)
    return await reply if inspect.isawaitable(reply) else reply


def checked(cmd: Command, given: Mapping[str, ArgValue]) -> Args | Reply:
    """The arguments converted to their declared kinds, or the one-line reason they cannot be."""
    values: dict[str, ArgValue] = {}
    if given.get(REPEATED):  # `--min-score 0.3 --min-score 0.5`: which one was meant?
        twice = cmd.param(str(given[REPEATED]).split(",")[0])
        flag = twice.flag if twice else "an option"
        return error(f"{flag} is given more than once; give it once.", cmd)
    for name in given:
        if name == REPEATED:
            continue
        if cmd.param(name) is None:
            return error(f"`{cmd.name}` has no option `--{shown(name, 20)}`.", cmd)
    for param in cmd.params:
        value = given.get(param.name)
        if param.kind == "flag":
            if value is not None and value is not False and str(value).strip().lower() in _YES:
                values[param.name] = 1
            continue
        if value is not None and param.kind != "int":
            value = visible(str(value)).strip() or None  # a number where text is expected (`unsubscribe 3`) is fine
        if value is None:
            if param.required and param.missing is not None:
                return error(param.missing, cmd)
            continue
        if param.kind == "int":
            number = _number(value)
            low, high = param.minimum, param.maximum
            if number is None or (low is not None and number < low) or (high is not None and number > high):
                span = f" from {low} to {high}" if low is not None and high is not None else ""
                got = f", not `{shown(str(value), 20)}`" if str(value).strip() else ""
                return error(f"{param.label} needs a number{span}{got}.", cmd)
            value = number
        values[param.name] = value
    return Args(values)


# parse_text's key for the options typed more than once (their names, comma-separated): never a
# parameter's name (those are identifiers), and handle() refuses the command, naming the first.
REPEATED = "--"

_YES = ("", "1", "yes", "true", "on")  # a flag's value: typed `--me` is "", Discord's a boolean


def _flagged(request: CommandRequest, flag: str | None) -> bool:
    """The request gives this flag (what `checked` will make of it)."""
    value = request.args.get(flag) if flag else None
    return value is not None and value is not False and str(value).strip().lower() in _YES


def _number(value: ArgValue) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    value = visible(value).strip()
    return int(value) if value.isdecimal() and value.isascii() and len(value) <= 12 else None


# ---- text front-ends: the one place a command line is taken apart -------------------------

_LEADING = re.compile(r"\s*(\S*)\s*(.*)", re.DOTALL)


def parse_text(text: str) -> tuple[str, dict[str, str]]:
    """`subscribe diffusion --backfill 5` -> ("subscribe", {"query": "diffusion", "backfill": "5"}).

    Options (`--name value`) are taken out first, wherever they are; then each positional
    parameter takes one word, except the last, which takes the rest of the line as typed.
    An optional parameter is left out when there are fewer words than parameters left
    (`digest daily 09:00` has no day). Values stay text: handle() checks and converts
    them, as it does the typed values of other front-ends. Never fails: an empty line is
    `help`, an unknown verb has no arguments.
    """
    match = _LEADING.match(text)
    assert match is not None  # the pattern matches any string
    verb, rest = match.group(1).lower() or "help", match.group(2).strip()
    cmd = COMMANDS.get(verb)
    if cmd is None:
        return verb, {}
    values: dict[str, str] = {}
    repeated: list[str] = []
    for param in cmd.params:
        if param.kind == "flag":  # `--me`: no value
            flag = re.compile(rf"(?:^|\s)--{re.escape(param.name)}(?=\s|$)")
            if flag.search(rest):
                values[param.name] = ""
                rest, times = flag.subn(" ", rest)
                rest = rest.strip()
                if times > 1:
                    repeated.append(param.name)
            continue
        if param.option:  # `--name value` or `--name=value`; given twice, refused (REPEATED)
            option = re.compile(rf"(?:^|\s){re.escape(param.flag)}(?:(?:=|\s+)(\S+)|\s*$)")
            while found := option.search(rest):
                if param.name in values and param.name not in repeated:
                    repeated.append(param.name)
                values[param.name] = found.group(1) or ""
                rest = (rest[: found.start()] + " " + rest[found.end():]).strip()
    if repeated:
        values[REPEATED] = ",".join(repeated)
    # `--word` left over is an option this command does not have (a query never needs one:
    # `-word` excludes a word): handle() names it, rather than subscribing to `--bogus foo`.
    unknown = re.search(r"(?:^|\s)--([A-Za-z][\w-]*)", rest)
    if unknown:
        values[unknown.group(1)] = ""
    positional = [p for p in cmd.params if not p.option]
    words = list(re.finditer(r"\S+", rest))
    at = 0
    for n, param in enumerate(positional):
        if at >= len(words):
            break
        if n == len(positional) - 1:
            values[param.name] = rest[words[at].start():].strip()
            break
        if not param.required and len(words) - at < len(positional) - n:
            continue
        values[param.name] = words[at].group()
        at += 1
    return verb, values


def request_from_text(channel: ChannelRef, user_id: str, text: str, can_manage: bool = True) -> CommandRequest:
    """A typed line (Slack's /papers, a mention, `papers-bot command`) as a CommandRequest."""
    text = visible(text)
    verb, args = parse_text(text)
    return CommandRequest(channel, user_id, verb, args, can_manage, text=text)
