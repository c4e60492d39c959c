"""Discord: posting over REST with discord.py's HTTP client, and the /papers command group.

Posting needs no gateway session (so `papers-bot poll` can deliver): discord.py's
HTTPClient logs in with the bot token and sends each card with a nonce and
enforce_nonce, so a retried send returns the first message instead of a duplicate.
Rate limits are left to discord.py's bucket handling. `run` also connects a
discord.Client for the slash commands and, with the message-content intent, link cards:
in the background, with its own retries (DiscordFrontend), never holding up polling.
Every address is from the config: REST and interaction replies from [discord] api_base,
per adapter (see RoutedHTTPClient: discord.py's own Route.BASE, process-wide, is never
changed), the gateway from [discord] gateway_url or GET /gateway/bot. The gateway client is
discord.py's AutoShardedClient: [discord] shards ("auto": GET /gateway/bot's count) and
shard_ids, IDENTIFYs paced by that answer's max_concurrency. Nothing discord-shaped leaves
this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import inspect
import json
import logging
import random
import re
from collections import deque
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Literal, Optional

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.errors import RateLimited
from discord.gateway import DiscordWebSocket, ReconnectWebSocket
from discord.http import HTTPClient, Ratelimit, Route, handle_message_parameters
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

import handlers
from handlers import Command, Param

from ..models import (
    Action,
    ArgValue,
    Card,
    ChannelRef,
    CommandRequest,
    Digest,
    PostResult,
    Reply,
    SubscribeForm,
    ThreadRef,
    ThreadReply,
)
from . import TOKEN_REFUSED_WAIT, CommandHandler, Completer, Running
from .discord_render import (
    CONTENT_MAX,
    card_buttons,
    card_embed,
    digest_embed,
    preview_embed,
    reply_content,
    reply_embeds,
    reply_message,
    safe,
    thread_reply_content,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


# Discord error codes after which posting to the channel cannot work until someone acts.
CHANNEL_GONE_CODES = {10003: "unknown channel", 50001: "missing access", 50013: "missing permissions"}


def rebased(route: Route, api_base: str) -> Route:
    """`route` aimed at `api_base` instead of discord.py's Route.BASE (a copy: routes are not ours).

    discord.py builds every URL, REST and webhook alike, as Route.BASE + path inside its own
    methods, and Route.BASE is a class attribute: one for the whole process. Rewriting the
    URL where a request is made instead gives each adapter its own base."""
    if api_base == Route.BASE or not route.url.startswith(Route.BASE):
        return route
    moved = copy.copy(route)
    moved.url = api_base + route.url[len(Route.BASE):]
    return moved


GLOBAL_LIMIT = (50, 1.0)  # Discord: "all bots can make up to 50 requests per second"


class GlobalPace:
    """At most `limit` requests in any `span` seconds, the bot's whole REST traffic: Discord's
    global limit, kept ahead of time. discord.py only reacts to it (a 429 with `global: true`
    stops every request for its retry_after); with many channels served side by side the bot
    would run into it again and again, and every 429 counts towards Discord's invalid-request
    ban (10,000 per 10 minutes).

    A request holds its place from when it is sent until `span` after its answer came back,
    so however long it took to reach Discord, no `limit + 1` requests reach it within `span`
    (counting from the send instead, a request delayed on its way could meet the next
    window's first ones)."""

    def __init__(self, limit: int, span: float):
        self.limit = max(limit, 1)
        self.span = span
        self.in_flight = 0
        self.answered: deque[float] = deque()  # when each answer of the last span came, in order
        self._turn = asyncio.Lock()
        self._released = asyncio.Event()

    async def wait(self) -> None:
        async with self._turn:  # in order of arrival
            loop = asyncio.get_running_loop()
            while True:
                now = loop.time()
                while self.answered and self.answered[0] <= now - self.span:
                    self.answered.popleft()
                if self.in_flight + len(self.answered) < self.limit:
                    break
                if self.answered:
                    await asyncio.sleep(self.answered[0] + self.span - now)
                else:  # every place is a request on its way: wait for an answer
                    self._released.clear()
                    await self._released.wait()
            self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.answered.append(asyncio.get_running_loop().time())
        self._released.set()


class PacedRatelimit(Ratelimit):
    """discord.py's per-bucket limiter (one per channel for messages), with two changes.

    A request that empties its bucket returns at once: discord.py sleeps the bucket's reset
    out in `__aexit__` before the request returns, so the dispatcher's slot for that channel
    was held for one more reset after the channel's last message. Here that refill runs in
    the background; the channel's next request waits for it in `acquire`, as it would have.
    And once a request has its bucket's token, it waits its turn at the global pace.
    (Written against discord.py 2.7's Ratelimit; tests/test_discord.py checks both.)"""

    def __init__(self, max_ratelimit_timeout: float | None, pace: GlobalPace | None, tasks: set[asyncio.Task]):
        super().__init__(max_ratelimit_timeout)
        self._pace = pace
        self._tasks = tasks  # the client's: cancelled when it closes
        self._refilling: asyncio.Task | None = None

    async def acquire(self) -> None:
        await super().acquire()
        if self._pace is None:
            return
        try:
            await self._pace.wait()
        except BaseException:  # cancelled waiting: the token goes back
            self.outgoing -= 1
            self.remaining += 1
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._pace is not None:
            self._pace.release()
        self.outgoing -= 1
        tokens = self.remaining - self.outgoing
        if self._sleeping.locked():
            return
        if tokens <= 0:
            if self._refilling is None or self._refilling.done():
                self._refilling = asyncio.get_running_loop().create_task(self._refresh())
                self._tasks.add(self._refilling)
                self._refilling.add_done_callback(self._tasks.discard)
        elif self._pending_requests:
            late = self._max_ratelimit_timeout and self.reset_after > self._max_ratelimit_timeout
            self._wake(tokens, exception=RateLimited(self.reset_after) if late else None)


class RoutedHTTPClient(HTTPClient):
    """discord.py's REST client, sending every request to `api_base`, its buckets
    PacedRatelimit, its requests kept within `global_limit` (None: not kept)."""

    def __init__(self, api_base: str, *args: Any, global_limit: tuple[int, float] | None = GLOBAL_LIMIT,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.api_base = api_base.rstrip("/")
        self._pace = GlobalPace(*global_limit) if global_limit else None
        self._refills: set[asyncio.Task] = set()

    def get_ratelimit(self, key: str) -> Ratelimit:
        try:
            return self._buckets[key]
        except KeyError:
            pass
        # discord.py keys a limiter by route until a response names the route's bucket hash,
        # then by hash. A request in flight while another one (another channel's) found that
        # hash is left under its route key, so the channel's next request got a fresh, full
        # limiter and a 429. The limiter it already has is taken along instead.
        bucket_hash, _, major = key.partition(":")
        for route_key, known in self._bucket_hashes.items():
            if known == bucket_hash and (earlier := self._buckets.pop(f"{route_key}:{major}", None)) is not None:
                self._buckets[key] = earlier
                return earlier
        made = self._buckets[key] = PacedRatelimit(self.max_ratelimit_timeout, self._pace, self._refills)
        self._try_clear_expired_ratelimits()
        return made

    async def request(self, route: Route, **kwargs: Any) -> Any:
        return await super().request(rebased(route, self.api_base), **kwargs)

    async def close(self) -> None:
        for task in list(self._refills):
            task.cancel()
        await super().close()


class RoutedWebhookAdapter(AsyncWebhookAdapter):
    """discord.py's webhook requests (interaction replies and follow-ups) sent to `api_base`.

    discord.py takes this adapter from a ContextVar (async_context); the gateway sets it in
    its own task, which every event task it starts inherits, so no other code sees it."""

    def __init__(self, api_base: str):
        super().__init__()
        self.api_base = api_base.rstrip("/")

    async def request(self, route: Route, *args: Any, **kwargs: Any) -> Any:
        return await super().request(rebased(route, self.api_base), *args, **kwargs)


def nonce_for(channel: ChannelRef, paper_id: str) -> str:
    """The same paper to the same channel always gets the same nonce (Discord allows 25 chars)."""
    return "p" + hashlib.sha256(f"{channel.key}|{paper_id}".encode()).hexdigest()[:24]


def _link_view(buttons: list[tuple[str, str]], paper_id: str | None = None,
               actions: tuple[Action, ...] = (), timeout: float | None = None,
               papers: tuple[str, ...] = ()) -> discord.ui.View:
    """Link buttons; with `paper_id`, a second row with Save and Not relevant; `actions`, a
    reply's buttons (each runs a command); `papers`, the cards of a reply of several (at most
    5): a row "Save 1" ... and a row "Not relevant 1" ..., numbered in the order of the cards.
    Presses come back as component interactions (`_Gateway.on_interaction`), by custom_id,
    whatever became of the view: `timeout` only lets discord.py forget a view it keeps (an
    interaction follow-up's) after that long."""
    view = discord.ui.View(timeout=timeout)
    for label, url in buttons:
        view.add_item(discord.ui.Button(style=discord.ButtonStyle.link, label=label, url=url))
    if paper_id is not None:
        for label, verb in (("Save", "save"), ("Not relevant", "not-relevant")):
            view.add_item(discord.ui.Button(style=discord.ButtonStyle.secondary, label=label, row=1,
                                            custom_id=f"{CUSTOM_ID}{verb}:{paper_id}"[:100]))
    for row, (label, verb) in ((3, ("Save", "save")), (4, ("Not relevant", "not-relevant"))):
        for number, paper in enumerate(papers[:5], 1):
            view.add_item(discord.ui.Button(style=discord.ButtonStyle.secondary, label=f"{label} {number}", row=row,
                                            custom_id=f"{CUSTOM_ID}{verb}:{paper}"[:100]))
    for action in actions[:5]:
        custom_id = CUSTOM_ID + "run:" + json.dumps([action.verb, dict(action.args)], separators=(",", ":"))
        if len(custom_id) <= 100:  # Discord's limit: a longer one is left out rather than cut
            view.add_item(discord.ui.Button(style=discord.ButtonStyle.secondary, label=action.label[:80],
                                            custom_id=custom_id, row=2))
    return view


REPLY_VIEW_SECONDS = 900.0  # discord.py keeps a follow-up's view this long (then forgets it; presses still work)
CUSTOM_ID = "papers:"  # our buttons' custom_id prefix: papers:save:ID, papers:not-relevant:ID, papers:run:JSON
_DISCORD_USER = re.compile(r"[0-9]{1,20}")


def mentions(item: Card | Digest) -> tuple[str, list[discord.Object]]:
    """The content that mentions the --me subscribers, and them as the only allowed mentions."""
    users = [user for user in item.mentions[:20] if _DISCORD_USER.fullmatch(user)]
    return " ".join(f"<@{user}>" for user in users), [discord.Object(id=int(user)) for user in users]


def _mentioning(item: Card | Digest) -> dict[str, Any]:
    """The message fields that mention the item's --me subscribers, and allow only them."""
    content, users = mentions(item)
    if not users:
        return {}
    return {"content": content, "allowed_mentions": discord.AllowedMentions(
        everyone=False, roles=False, replied_user=False, users=users)}


def request_from_component(interaction: discord.Interaction) -> CommandRequest | None:
    """A press of one of our buttons as a typed request; None for anything else."""
    data: Any = interaction.data or {}
    custom_id = str(data.get("custom_id", "")) if isinstance(data, dict) else ""
    if not custom_id.startswith(CUSTOM_ID):
        return None
    kind, _, value = custom_id[len(CUSTOM_ID):].partition(":")
    args: dict[str, ArgValue]
    if kind in ("save", "not-relevant"):
        verb, args = kind, {"paper": value}
    elif kind == "run":
        try:
            verb, args = json.loads(value)
        except (ValueError, TypeError):
            return None
        if not (isinstance(verb, str) and isinstance(args, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in args.items())):
            return None
    else:
        return None
    return CommandRequest(ChannelRef("discord", str(interaction.channel_id)), str(interaction.user.id), verb, args,
                          can_manage=_can_manage(interaction))


def _can_manage(interaction: discord.Interaction) -> bool:
    """Manage Channels (or Administrator) in a server; in a direct message with the bot, the
    person's own feed: theirs."""
    if interaction.guild_id is None:
        return True
    permissions = interaction.permissions
    return bool(permissions and (permissions.manage_channels or permissions.administrator))


class DiscordAdapter:
    """Sends cards and digests to channel ids through discord.py's REST client."""

    platform = "discord"

    def __init__(self, token: str, *, api_base: str, max_ratelimit_timeout: float = 60.0,
                 config: Config | None = None, complete: Completer | None = None,
                 global_limit: tuple[int, float] | None = GLOBAL_LIMIT):
        self.token = token
        self.global_limit = global_limit  # requests per seconds, all channels together (see GlobalPace)
        self.api_base = api_base.rstrip("/")
        self.max_ratelimit_timeout = max_ratelimit_timeout
        # What the gateway front-end needs ([discord], autocomplete); config None: posting only.
        self.config = config
        self.complete: Completer = complete or (lambda channel, verb, param, typed: [])
        self._http: HTTPClient | None = None
        self._login = asyncio.Lock()
        self.user_id: str | None = None
        self.refused = False  # the token got a 401: posting cannot work until a restart with another

    async def _client(self) -> HTTPClient:
        async with self._login:
            if self.refused:
                raise discord.LoginFailure("the token was refused before")
            if self._http is None:
                http = RoutedHTTPClient(self.api_base, asyncio.get_running_loop(),
                                        max_ratelimit_timeout=self.max_ratelimit_timeout,
                                        global_limit=self.global_limit)
                try:
                    me = await http.static_login(self.token)
                except BaseException as exc:
                    await http.close()  # static_login leaves its session open when it fails
                    if isinstance(exc, discord.LoginFailure):
                        self.refused = True  # a token does not change while running: do not ask again
                        log.error("Discord refused the token (HTTP 401): nothing can be posted to Discord; "
                                  "check DISCORD_TOKEN")
                    raise
                self.user_id = str(me["id"])
                self._http = http
            return self._http

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        return await self._send(
            channel.channel_id,
            embeds=[card_embed(card)],
            view=_link_view(card_buttons(card), card.paper_id),
            nonce=nonce_for(channel, card.paper_id),
            **_mentioning(card),
        )

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        return await self._send(channel.channel_id, content=safe(text, CONTENT_MAX))

    async def post_in_thread(self, thread: ThreadRef, reply: ThreadReply) -> PostResult:
        """A reply to the card (message_reference; a deleted card fails the reply rather than
        post it on its own), with a nonce of its key: a resend soon after is the same message."""
        reference = discord.MessageReference(message_id=int(thread.message_id),
                                             channel_id=int(thread.channel.channel_id),
                                             fail_if_not_exists=True).to_message_reference_dict()
        return await self._send(thread.channel.channel_id, content=thread_reply_content(reply),
                                message_reference=reference, nonce=nonce_for(thread.channel, f"reply:{reply.key}"))

    async def find_in_thread(self, thread: ThreadRef, reply: ThreadReply, since: datetime) -> str | None:
        """Our reply to the card since `since`: a message of ours referencing the card, with
        the reply's nonce (which Discord does not always return) or its very content."""
        http = await self._client()
        after = discord.utils.time_snowflake(since - timedelta(minutes=1))
        messages = await http.logs_from(int(thread.channel.channel_id), 100, after=after)
        nonce, content = nonce_for(thread.channel, f"reply:{reply.key}"), thread_reply_content(reply)
        for message in messages:
            reference = message.get("message_reference")
            if (str((message.get("author") or {}).get("id")) == self.user_id
                    and reference is not None and str(reference.get("message_id")) == thread.message_id
                    and (message.get("nonce") == nonce or message.get("content") == content)):
                return str(message["id"])
        return None

    async def find_sent(self, channel: ChannelRef, paper_id: str, since: datetime) -> str | None:
        """The id of our own message about `paper_id` posted since `since`, if there is one.

        A resend with the same nonce is deduplicated by Discord only for a few minutes;
        after a longer outage, and for digests (whose contents may differ on the next try),
        the bot reads the channel's recent messages instead.
        """
        http = await self._client()
        after = discord.utils.time_snowflake(since - timedelta(minutes=1))
        messages = await http.logs_from(int(channel.channel_id), 100, after=after)
        needle = f"/abs/{paper_id})"
        for message in messages:
            if str((message.get("author") or {}).get("id")) != self.user_id:
                continue
            for embed in message.get("embeds") or []:
                if (handlers.paper_in_link(str(embed.get("url") or "")) == paper_id
                        or needle in str(embed.get("description") or "")):
                    return str(message["id"])
        return None

    async def post_digest(self, digest: Digest) -> PostResult:
        ids = ",".join(card.paper_id for card in digest.cards)
        return await self._send(digest.channel.channel_id, embeds=[digest_embed(digest)],
                                nonce=nonce_for(digest.channel, f"digest:{ids}"), **_mentioning(digest))

    async def reply(self, channel_id: str, message_id: str, reply: Reply) -> PostResult:
        """Answer a message (link cards) with the reply's cards."""
        reference = discord.MessageReference(message_id=int(message_id), channel_id=int(channel_id),
                                             fail_if_not_exists=False).to_message_reference_dict()
        one = reply.cards[0] if len(reply.cards) == 1 else None
        return await self._send(channel_id, embeds=reply_embeds(reply.cards),
                                view=_link_view(card_buttons(one), one.paper_id) if one else None,
                                message_reference=reference)

    async def _send(self, channel_id: str, **fields) -> PostResult:
        # Nobody is pinged, except the --me subscribers a card names (post(), by user id).
        fields.setdefault("allowed_mentions", discord.AllowedMentions.none())
        try:
            http = await self._client()
            params = handle_message_parameters(**fields)
            with params:
                message = await http.send_message(int(channel_id), params=params)
        except discord.LoginFailure:
            return PostResult(ok=False, error="the Discord token was refused (HTTP 401): check DISCORD_TOKEN",
                              retryable=True, retry_after=TOKEN_REFUSED_WAIT, platform_wide=True)
        except discord.RateLimited as exc:  # longer than we are willing to wait in place
            return PostResult(ok=False, error="rate limited by Discord", retryable=True, retry_after=exc.retry_after)
        except discord.HTTPException as exc:
            gone = CHANNEL_GONE_CODES.get(exc.code)
            if gone or exc.status in (403, 404):
                return PostResult(ok=False, error=gone or f"HTTP {exc.status}", channel_gone=True)
            if exc.status == 401:
                return PostResult(ok=False, error="the Discord token was refused (HTTP 401)")
            return PostResult(ok=False, error=f"HTTP {exc.status} from Discord (code {exc.code})",
                              retryable=exc.status >= 500 or exc.status == 429)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return PostResult(ok=False, error=f"cannot reach Discord ({type(exc).__name__})", retryable=True)
        return PostResult(ok=True, message_id=str(message["id"]))

    async def start(self, on_command: CommandHandler) -> Running | None:
        """The gateway for /papers (and link cards), connecting in the background (see start_discord)."""
        if self.config is None:
            return None
        return await start_discord(self, self.config, on_command, self.complete)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


# ---- slash commands -------------------------------------------------------------------------

def build_command_group(on_command: CommandHandler, on_complete: Completer) -> app_commands.Group:
    """`/papers <subcommand>`: one subcommand per registered command, its options from the
    command's declared parameters (handlers.Param), descriptions from its docstring.

    Every callback defers (Discord allows 3 seconds for the first answer), passes the typed
    options on as the request's arguments and follows up ephemerally. Changing a channel
    needs Manage Channels, checked by the handlers from `can_manage`: Discord's
    default_member_permissions applies to whole top-level commands only, and /papers also
    holds the lookups everyone may use.
    """
    group = app_commands.Group(name="papers", description="New machine-learning papers in this channel")

    async def run(interaction: discord.Interaction, verb: str, options: dict[str, Any]) -> None:
        args: dict[str, ArgValue] = {name: value for name, value in options.items()
                                     if value is not None and value is not False}
        request = CommandRequest(ChannelRef("discord", str(interaction.channel_id)), str(interaction.user.id), verb,
                                 args, can_manage=_can_manage(interaction))
        if verb == "subscribe" and not args:  # no query: the subscribe form (a modal must be the first answer)
            await open_subscribe_form(interaction, request, on_command)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_reply(interaction, await on_command(request))

    for cmd in handlers.COMMANDS.values():
        group.add_command(_subcommand(cmd, run, on_complete))
    return group


async def send_reply(interaction: discord.Interaction, reply: Reply) -> None:
    """The ephemeral follow-up of a deferred interaction: text, cards, and the reply's buttons."""
    (content, embeds), none = reply_message(reply.text, reply.cards), discord.AllowedMentions.none()
    one = reply.cards[0].paper_id if len(reply.cards) == 1 else None  # one card: its Save / Not relevant
    # Several cards (search, trending): numbered Save / Not relevant for those shown, in order.
    several = tuple(card.paper_id for card in reply.cards[:len(embeds)]) if len(reply.cards) > 1 else ()
    if reply.actions or one or several:
        view = _link_view([], one, actions=reply.actions, timeout=REPLY_VIEW_SECONDS, papers=several)
        await interaction.followup.send(content=content, embeds=embeds, ephemeral=True, allowed_mentions=none,
                                        view=view)
    else:
        await interaction.followup.send(content=content, embeds=embeds, ephemeral=True, allowed_mentions=none)


async def answer_component(on_command: CommandHandler, interaction: discord.Interaction) -> bool:
    """A press of Save, Not relevant or a reply's button: run its command, answer ephemerally."""
    request = request_from_component(interaction)
    if request is None:
        return False
    await interaction.response.defer(ephemeral=True, thinking=True)
    await send_reply(interaction, await on_command(request))
    return True


# ---- the subscribe form: a modal, then its preview with Confirm / Edit / Cancel ----------------

FORM_TIMEOUT = 900.0  # seconds the modal and the preview's buttons keep working (15 minutes)
_NO_MENTIONS = discord.AllowedMentions.none()


async def open_subscribe_form(interaction: discord.Interaction, request: CommandRequest,
                              on_command: CommandHandler) -> None:
    """`/papers subscribe` without a query: the handlers check the right to manage the channel
    and the rate limit, and give the form; it opens as a modal (the interaction's first and
    only answer, within Discord's 3 seconds: no preview work happens before it)."""
    reply = await on_command(request)
    if reply.form is None:
        await interaction.response.send_message(reply_content(reply.text), ephemeral=True,
                                                allowed_mentions=_NO_MENTIONS)
        return
    await interaction.response.send_modal(SubscribeModal(reply.form, on_command))


class SubscribeModal(discord.ui.Modal):
    """The query, in a modal. Discord modals cannot change while open, so submitting shows the
    preview (ephemeral) with Confirm, Edit and Cancel; Confirm subscribes the channel the form
    was opened from (kept here, never taken from the submission)."""

    def __init__(self, form: SubscribeForm, on_command: CommandHandler):
        super().__init__(title=form.title[:45], timeout=FORM_TIMEOUT)
        self.form = form
        self.on_command = on_command
        self.query: discord.ui.TextInput = discord.ui.TextInput(
            label=form.label[:45], placeholder=form.placeholder[:100], default=form.query[:form.max_length] or None,
            max_length=form.max_length, required=True)
        self.add_item(self.query)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        query = (self.query.value or "").strip()
        reply = await self.on_command(CommandRequest(self.form.channel, str(interaction.user.id), "preview",
                                                     {"query": query}, can_manage=_can_manage(interaction)))
        if reply.form is None or reply.form.preview is None:  # refused (the rate limit, a busy database)
            await interaction.followup.send(content=reply_content(reply.text), ephemeral=True,
                                            allowed_mentions=_NO_MENTIONS)
            return
        form = reply.form
        await interaction.followup.send(embed=preview_embed(form), view=ConfirmSubscribe(form, self.on_command,
                                                                                          str(interaction.user.id)),
                                        ephemeral=True, allowed_mentions=_NO_MENTIONS)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]  # discord.py: Modal.on_error has no item
        log.exception("Discord: the subscribe form failed", exc_info=error)


class ConfirmSubscribe(discord.ui.View):
    """The preview's buttons: Confirm subscribes exactly as `/papers subscribe <query>` does
    (rights checked again), Edit reopens the modal with the query, Cancel ends it."""

    def __init__(self, form: SubscribeForm, on_command: CommandHandler, user_id: str):
        super().__init__(timeout=FORM_TIMEOUT)
        self.form = form
        self.on_command = on_command
        self.user_id = user_id
        preview = form.preview
        self.confirm.disabled = preview is None or preview.error is not None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return str(interaction.user.id) == self.user_id  # the preview is ephemeral: only its owner sees it

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()  # subscribing includes the estimate: it may take a few seconds
        self.stop()
        reply = await self.on_command(CommandRequest(self.form.channel, str(interaction.user.id), "subscribe",
                                                     {"query": self.form.query}, can_manage=_can_manage(interaction)))
        await interaction.edit_original_response(content=reply_content(reply.text), embed=None, view=None,
                                                 allowed_mentions=_NO_MENTIONS)

    @discord.ui.button(label="Edit", style=discord.ButtonStyle.secondary)
    async def edit(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(SubscribeModal(replace(self.form, preview=None), self.on_command))

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content="Cancelled: nothing was subscribed.", embed=None, view=None)

    async def on_error(self, interaction: discord.Interaction, error: Exception,
                       item: discord.ui.Item) -> None:
        log.exception("Discord: the subscribe form's button failed", exc_info=error)


def _subcommand(cmd: Command, run, on_complete: Completer) -> app_commands.Command:
    """One subcommand, its callback's signature built from the declared parameters (discord.py
    reads the options from the signature)."""
    verb = cmd.name

    async def callback(interaction: discord.Interaction, **options: Any) -> None:
        await run(interaction, verb, options)

    params = [inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=discord.Interaction)]
    params += [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, annotation=_annotation(p),
                                 default=inspect.Parameter.empty if p.required else None) for p in cmd.params]
    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__discord_app_commands_param_description__ = {  # type: ignore[attr-defined]
        p.name: p.description[:100] for p in cmd.params}
    completing = {p.name: _completer(verb, p.name, on_complete) for p in cmd.params if p.complete}
    if completing:
        callback = app_commands.autocomplete(**completing)(callback)
    return app_commands.Command(name=verb, description=cmd.summary[:100], callback=callback)


def _annotation(param: Param) -> Any:
    kind: Any
    if param.kind == "flag":
        kind = bool
    elif param.kind == "int":
        kind = int if param.minimum is None and param.maximum is None else \
            app_commands.Range[int, param.minimum, param.maximum]
    elif param.choices:
        kind = Literal.__getitem__(param.choices)
    else:
        kind = str
    return kind if param.required else Optional[kind]


def _completer(verb: str, param: str, on_complete: Completer):
    async def suggest(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        found = on_complete(ChannelRef("discord", str(interaction.channel_id)), verb, param, current)
        return [app_commands.Choice(name=label[:100], value=value) for label, value in found][:25]

    return suggest


# Gateway close codes after which connecting again cannot help until someone acts.
PERMANENT_CLOSE_CODES = {
    4004: "Discord refused the token (gateway: Authentication failed)",
    4010: "the gateway refused the shard (4010 Invalid shard): [discord] shard_ids must be below [discord] shards",
    4011: "the gateway requires more shards (4011 Sharding required): the bot is in too many servers for "
          '[discord] shards; set shards = "auto", or a larger number (the same in every process)',
    4012: "the gateway refused the API version (4012)",
    4013: "the gateway refused the intents (4013 Invalid intents)",
    4014: "the Message Content intent is not enabled for this bot: enable it in the Discord developer "
          "portal, or set [discord] message_content = false",
}
RETRY_FIRST = 1.0  # seconds before connecting again after the first failure; doubles up to RETRY_MAX
RETRY_MAX = 60.0
CONNECT_TIMEOUT = 30.0  # one WebSocket connection and HELLO
CLOSE_TIMEOUT = 1.0  # closing the gateway politely; then the sockets are simply dropped
QUICK_DROPS = 3  # connections in a row that ended within STABLE seconds: back off instead of reconnecting
STABLE = 10.0


CONNECTING_AT_ONCE = 4  # shards of one process opening their gateway connection at the same time
IDENTIFY_SPACING = 5.5  # seconds between IDENTIFYs of one shard bucket: Discord's window is 5, plus the network's


class IdentifyPacer:
    """Discord's identify limit, kept ahead of time: shard i is in bucket i % max_concurrency
    (GET /gateway/bot's session_start_limit), and each bucket IDENTIFYs at most once per
    IDENTIFY_SPACING. Buckets go side by side; shards of one bucket, in turn. One pacer serves
    every client of a front-end, so a client started after a failure waits its turn too.
    (Within this process: processes splitting the shards pace each their own.)

    `async with pacer.turn(shard):` connect, and call `identified(shard)` as the IDENTIFY
    goes: a connection that failed before it leaves the bucket's turn unused."""

    def __init__(self, max_concurrency: int = 1):
        self.max_concurrency = max(1, max_concurrency)
        self._last: dict[int, float] = {}  # bucket -> when its last IDENTIFY went (loop time)
        self._turns: dict[int, asyncio.Lock] = {}

    def _bucket(self, shard_id: int | None) -> int:
        return (shard_id or 0) % self.max_concurrency

    @contextlib.asynccontextmanager
    async def turn(self, shard_id: int | None) -> AsyncIterator[None]:
        bucket = self._bucket(shard_id)
        async with self._turns.setdefault(bucket, asyncio.Lock()):
            last = self._last.get(bucket)
            if last is not None and (wait := last + IDENTIFY_SPACING - asyncio.get_running_loop().time()) > 0:
                await asyncio.sleep(wait)
            yield

    def identified(self, shard_id: int | None) -> None:
        self._last[self._bucket(shard_id)] = asyncio.get_running_loop().time()


class _Gateway(discord.AutoShardedClient):
    """discord.py's sharded client, with the gateway address, the shard count and the identify
    pace from the config and GET /gateway/bot, each shard kept up on its own (see connect)."""

    def __init__(self, *, intents: discord.Intents, group: app_commands.Group, guild_id: int | None,
                 on_command: CommandHandler, adapter: DiscordAdapter, gateway_url: str = "", sync: bool = True,
                 shards: int | None = None, shard_ids: tuple[int, ...] = (), pacer: IdentifyPacer | None = None):
        sharding: dict[str, Any] = {"shard_count": shards} if shards else {}
        if shard_ids:
            sharding["shard_ids"] = list(shard_ids)
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(), **sharding)
        # discord.Client makes a plain HTTPClient (Route.BASE); ours goes to the adapter's api_base.
        # Nothing has used the first one yet: it opens its session at login.
        self.http = RoutedHTTPClient(adapter.api_base, self.loop, max_ratelimit_timeout=self.http.max_ratelimit_timeout)
        self._connection.http = self.http
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(group)
        self.guild_id = guild_id
        self.on_command = on_command
        self.adapter = adapter
        self.gateway_url = gateway_url  # empty: where GET /gateway/bot says
        self.auto_shards = not shards  # the count is GET /gateway/bot's, asked again by every client
        self.pacer = pacer or IdentifyPacer()
        self.sockets: dict[int, DiscordWebSocket] = {}  # shard id -> its current gateway connection
        self.ready_shards: set[int] = set()  # the shards that got READY at least once
        # Shards opening their connection at once: each opening (WebSocket handshake, HELLO, IDENTIFY,
        # READY) is a burst of work on the loop; max_concurrency of them together held it for 100s of ms.
        self._connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)
        self.connected = False  # a shard got READY at least once
        self.sync = sync  # False: an earlier client of this front-end synced the commands already
        self.synced = False

    async def setup_hook(self) -> None:
        # Guild sync is instant (development); global sync can take up to an hour to show.
        if not self.sync:
            return
        if self.guild_id:
            guild = discord.Object(id=self.guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        self.synced = True

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Its turn was awaited before connecting (_keep_shard); discord.py's own hook sleeps 5 s
        # before every IDENTIFY but the first.
        self.pacer.identified(shard_id)

    async def on_connect(self) -> None:
        if not self.connected:
            log.info("connected to the Discord gateway as %s: /papers commands are on", self.user)
        self.connected = True

    async def on_shard_connect(self, shard_id: int) -> None:
        if shard_id not in self.ready_shards and (self.shard_count or 1) > 1:
            log.info("Discord gateway: shard %d of %d connected", shard_id, self.shard_count)
        self.ready_shards.add(shard_id)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Application commands are the tree's; our buttons' presses come here.
        if interaction.type is discord.InteractionType.component:
            await answer_component(self.on_command, interaction)

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not message.content:
            return
        await answer_links(self.on_command, self.adapter, str(message.channel.id), str(message.id),
                           str(message.author.id), message.content)

    def _get_websocket(self, guild_id: int | None = None, *, shard_id: int | None = None) -> DiscordWebSocket:
        if shard_id is None:  # a server's shard, as Discord places it; direct messages: shard 0
            shard_id = 0 if guild_id is None else (guild_id >> 22) % (self.shard_count or 1)
        return self.sockets[shard_id]

    async def connect(self, *, reconnect: bool = True) -> None:
        """discord.py's sharded connect, with the gateway address from the config and without its retries.

        discord.py 2.7 opens wss://gateway.discord.gg (a class attribute) whenever it was given a
        shard count, paces IDENTIFYs by sleeping 5 s before each, and retries failures itself,
        logging a traceback each time. Here GET /gateway/bot on the REST base gives the shard
        count ([discord] shards = "auto"), the identify limits and the address ([discord]
        gateway_url, when set, wins); every shard of this process connects in its own task,
        paced by IdentifyPacer; the reconnects the gateway asks for (op 7, op 9, a dropped
        socket) are made as discord.py makes them, one shard at a time. A shard's first failure
        to connect, or a permanent one (a close code in PERMANENT_CLOSE_CODES), is raised to
        DiscordFrontend, which logs it once and starts over or stops; a shard that was up
        before tries again alone, with its own backoff, and the others stay.
        """
        # Interaction replies are webhook requests, made in tasks this one starts (they inherit it).
        async_context.set(RoutedWebhookAdapter(self.adapter.api_base))
        count, url, limits = await self.http.get_bot_gateway()
        home = yarl.URL(self.gateway_url or url)
        if self.shard_count is None:
            self.shard_count = max(1, int(count))
        elif count > self.shard_count:
            log.warning("Discord recommends %d gateway shards for this bot, [discord] shards = %d: it requires "
                        "more (closing with 4011) past 2,500 servers a shard", count, self.shard_count)
        shard_ids = list(self.shard_ids or range(self.shard_count))
        self._connection.shard_count = self.shard_count
        self._connection.shard_ids = shard_ids
        self.pacer.max_concurrency = max(1, int(limits.get("max_concurrency") or 1))
        await self._session_starts(limits, len(shard_ids))
        if self.shard_count > 1:
            log.info("Discord gateway: connecting shards %s of %d, %d IDENTIFY at a time",
                     ", ".join(map(str, shard_ids)), self.shard_count, self.pacer.max_concurrency)
        tasks = [asyncio.get_running_loop().create_task(self._keep_shard(shard, home, initial=not n),
                                                        name=f"discord-shard-{shard}")
                 for n, shard in enumerate(shard_ids)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the first failure (a shard returns only when the client closed)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _session_starts(self, limits: Any, needed: int) -> None:
        """Wait for Discord's daily session starts to reset when there are fewer left than shards
        to start (going past them gets the token reset)."""
        remaining, reset_after = int(limits.get("remaining", needed)), float(limits.get("reset_after") or 0) / 1000
        if remaining < needed:
            log.warning("Discord allows %d more gateway session starts until its limit resets, %d shard(s) "
                        "to start: waiting %.1fs", remaining, needed, reset_after)
            await asyncio.sleep(reset_after)

    async def _keep_shard(self, shard_id: int, home: yarl.URL, *, initial: bool) -> None:
        """One shard's connection, for as long as the client is open (see connect)."""
        params: dict = {"initial": initial, "shard_id": shard_id, "gateway": home}
        loop = asyncio.get_running_loop()
        quick, delay = 0, RETRY_FIRST
        while not self.is_closed():
            failure: Exception
            began = loop.time()
            try:
                # An IDENTIFY waits its turn first: outside CONNECT_TIMEOUT, as it can be long.
                turn = contextlib.nullcontext() if params.get("resume") else self.pacer.turn(shard_id)
                async with turn, self._connecting:
                    began = loop.time()
                    ws = await asyncio.wait_for(DiscordWebSocket.from_client(self, **params), timeout=CONNECT_TIMEOUT)
                self.sockets[shard_id] = ws
                params["initial"] = False
                while True:
                    await ws.poll_event()
            except ReconnectWebSocket as exc:
                self.dispatch("disconnect")
                self.dispatch("shard_disconnect", shard_id)
                quick = quick + 1 if loop.time() - began < STABLE else 0
                if quick < QUICK_DROPS:
                    last = self.sockets.get(shard_id)
                    if last is None or not exc.resume or last.session_id is None:
                        params.update(resume=False, session=None, sequence=None, gateway=home)
                    else:  # resume where READY said, unless the config names the one gateway to use
                        params.update(resume=True, session=last.session_id, sequence=last.sequence,
                                      gateway=home if self.gateway_url else last.gateway)
                    continue
                failure = ConnectionError("the gateway keeps closing the connection")
            except Exception as exc:
                failure = exc
            reason, permanent = _failure(failure)
            if permanent or shard_id not in self.ready_shards:
                raise failure
            # It was up before: this shard alone tries again; the others are not touched.
            if loop.time() - began >= STABLE:
                delay = RETRY_FIRST
            wait = delay * random.uniform(0.8, 1.2)
            log.warning("Discord gateway shard %d: %s; connecting it again in %.0fs", shard_id, reason, wait,
                        exc_info=None if isinstance(failure, _EXPECTED) else failure)
            await asyncio.sleep(wait)
            quick, delay = 0, min(delay * 2, RETRY_MAX)

    async def close(self) -> None:
        """Close every shard's connection and the REST session (discord.py's close, for our shards)."""
        if self._closing_task:
            return await self._closing_task

        async def _close() -> None:
            await self._connection.close()
            await asyncio.gather(*(ws.close(code=1000) for ws in self.sockets.values() if ws.open),
                                 return_exceptions=True)
            await self.http.close()

        self._closing_task = asyncio.create_task(_close())
        await self._closing_task


async def answer_links(on_command: CommandHandler, adapter: DiscordAdapter, channel_id: str, message_id: str,
                       user_id: str, content: str) -> int:
    """Reply to a message with a card for each arXiv or Hugging Face paper link in it."""
    cards: list[Card] = []
    for paper_id in handlers.paper_links(content):
        reply = await on_command(handlers.show_request(ChannelRef("discord", channel_id), user_id, paper_id))
        cards.extend(reply.cards)
    if cards:
        await adapter.reply(channel_id, message_id, Reply("", cards=tuple(cards)))
    return len(cards)


def _failure(exc: BaseException) -> tuple[str, bool]:
    """What went wrong connecting to Discord, in one line, and whether it is permanent."""
    if isinstance(exc, discord.LoginFailure):
        return "Discord refused the token (HTTP 401): check DISCORD_TOKEN", True
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return PERMANENT_CLOSE_CODES[4014], True
    if isinstance(exc, discord.ConnectionClosed):
        if exc.code in PERMANENT_CLOSE_CODES:
            return PERMANENT_CLOSE_CODES[exc.code], True
        return f"the gateway closed the connection ({exc.code})", False
    if isinstance(exc, discord.GatewayNotFound):
        return "GET /gateway/bot failed", False
    if isinstance(exc, discord.HTTPException):
        # 4xx (other than rate limits) will not change by asking again: a missing scope, a bad request.
        permanent = 400 <= exc.status < 500 and exc.status not in (408, 429)
        return f"HTTP {exc.status} from the Discord API (code {exc.code}): {exc.text}"[:300], permanent
    if isinstance(exc, asyncio.TimeoutError):
        return "connecting timed out", False
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return f"cannot reach Discord ({type(exc).__name__}: {exc})"[:300], False
    return f"{type(exc).__name__}: {exc}"[:300], False


_EXPECTED = (discord.DiscordException, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class DiscordFrontend:
    """The gateway connection behind /papers, kept up in a background task.

    Each attempt logs in, syncs the commands and connects with a fresh discord.Client;
    a failure is logged once and retried after a doubling, jittered delay (at most
    RETRY_MAX); a refused token or intent is permanent: one error, and this front-end
    stops while posting over REST goes on. Every client is closed, sessions included,
    whatever way its attempt ended.
    """

    def __init__(self, make_client: Callable[[bool], _Gateway], token: str):
        self.make_client = make_client
        self.token = token
        self.client: _Gateway | None = None
        self._state = "starting"  # connecting, retrying, stopped, failed (see state)
        self.error: str | None = None
        self.task: asyncio.Task | None = None
        self.synced = False  # the commands are synced once per run, not on every reconnect

    @property
    def state(self) -> str:
        """starting, connecting, connected (READY came), retrying (waiting to), stopped or failed (permanently)."""
        if self._state == "connecting" and self.client is not None and self.client.connected:
            return "connected"
        return self._state

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="discord-gateway")

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            self._state = "connecting"
            client = self.client = self.make_client(not self.synced)
            try:
                await client.login(self.token)
                await client.connect()
                return  # closed on purpose
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = exc
                reason, permanent = _failure(exc)
                if isinstance(exc, discord.ConnectionClosed) and exc.shard_id is not None and client.shard_count:
                    which = f"shard {exc.shard_id} of {client.shard_count}"
                    if exc.code == 4011 and client.auto_shards:  # Discord wants more since it said: ask again
                        reason, permanent = (f"the gateway requires more shards (4011 Sharding required, {which}); "
                                             "asking GET /gateway/bot for the number again"), False
                    elif client.shard_count > 1 or exc.code == 4011:
                        reason = f"{which}: {reason}"
            finally:
                self.synced = self.synced or client.synced
                await _dispose(client)
            if permanent:
                self._state, self.error = "failed", reason
                log.error("%s. The Discord front-end (/papers) is off; polling and delivery go on", reason)
                return
            if client.connected:
                delay = RETRY_FIRST  # it worked for a while: start the backoff again
            wait = delay * random.uniform(0.8, 1.2)
            self._state, self.error = "retrying", reason
            # An unexpected kind of failure (a bug, here or in discord.py) gets its traceback, once per attempt.
            log.warning("Discord gateway: %s; connecting again in %.0fs", reason, wait,
                        exc_info=None if isinstance(failure, _EXPECTED) else failure)
            await asyncio.sleep(wait)
            delay = min(delay * 2, RETRY_MAX)

    async def close(self) -> None:
        """Stop, whatever the state (logging in, connecting, connected, waiting): about a second at most."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=CLOSE_TIMEOUT + 0.5)
        if self.client is not None:  # the task did not finish in time: drop the sockets
            await self.client.http.close()
        if self._state != "failed":
            self._state = "stopped"


async def _dispose(client: discord.Client) -> None:
    """Close a client and its aiohttp session, within CLOSE_TIMEOUT (no "Unclosed client session")."""
    try:
        await asyncio.wait_for(client.close(), timeout=CLOSE_TIMEOUT)
    except (Exception, asyncio.CancelledError):  # a polite close that failed or hung: drop the session below
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await client.http.close()
            raise
    await client.http.close()  # closing twice is harmless; after a timeout it is what closes


async def start_discord(adapter: DiscordAdapter, config, on_command: CommandHandler,
                        on_complete: Completer) -> Running:
    """Connect the gateway for /papers (and link cards with the message-content intent) in the background.

    Returns at once; nothing here waits for Discord. The returned Running's close()
    stops the front-end within about a second in any state.
    """
    intents = discord.Intents.default()
    intents.message_content = config.discord.message_content
    pacer = IdentifyPacer()  # one for the front-end's clients: a client started after a failure waits its turn

    def make_client(sync: bool) -> _Gateway:
        group = build_command_group(on_command, on_complete)
        return _Gateway(intents=intents, group=group, guild_id=config.discord.dev_guild_id or None,
                        on_command=on_command, adapter=adapter, gateway_url=config.discord.gateway_url, sync=sync,
                        shards=config.discord.shards, shard_ids=config.discord.shard_ids, pacer=pacer)

    frontend = DiscordFrontend(make_client, adapter.token)
    frontend.start()
    return Running(frontend.close, frontend=frontend)
