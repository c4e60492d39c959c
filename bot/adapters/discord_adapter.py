"""Discord: posting over REST with discord.py's HTTP client, and the /papers command group.

Posting needs no gateway session (so `papers-bot poll` can deliver): discord.py's
HTTPClient logs in with the bot token and sends each card with a nonce and
enforce_nonce, so a retried send returns the first message instead of a duplicate.
Rate limits are left to discord.py's bucket handling. `run` also connects a
discord.Client for the slash commands and, with the message-content intent, link cards:
in the background, with its own retries (DiscordFrontend), never holding up polling.
Every address is from the config: REST and interaction replies from [discord] api_base
(discord.py's Route.BASE, the one process-wide setting), the gateway from
[discord] gateway_url or GET /gateway/bot. Nothing discord-shaped leaves this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
from datetime import datetime, timedelta
from typing import Awaitable, Callable, Literal, Optional
from zoneinfo import available_timezones

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket, ReconnectWebSocket
from discord.http import HTTPClient, Route, handle_message_parameters

from ..errors import BotError
from ..models import Card, ChannelRef, CommandRequest, Digest, PostResult, Reply
from ..sources.ids import canonical_arxiv_id
from . import TOKEN_REFUSED_WAIT, Running
from .discord_render import CONTENT_MAX, card_buttons, card_embed, digest_embed, reply_embeds, safe

log = logging.getLogger(__name__)

CommandHandler = Callable[[CommandRequest], Awaitable[Reply]]

# Discord error codes after which posting to the channel cannot work until someone acts.
CHANNEL_GONE_CODES = {10003: "unknown channel", 50001: "missing access", 50013: "missing permissions"}


def set_api_base(api_base: str) -> None:
    """Point discord.py's REST routes at another server (tests, staging). Process-wide."""
    Route.BASE = api_base.rstrip("/")


def nonce_for(channel: ChannelRef, paper_id: str) -> str:
    """The same paper to the same channel always gets the same nonce (Discord allows 25 chars)."""
    return "p" + hashlib.sha256(f"{channel.key}|{paper_id}".encode()).hexdigest()[:24]


def _link_view(buttons: list[tuple[str, str]]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for label, url in buttons:
        view.add_item(discord.ui.Button(style=discord.ButtonStyle.link, label=label, url=url))
    return view


class DiscordAdapter:
    """Sends cards and digests to channel ids through discord.py's REST client."""

    platform = "discord"

    def __init__(self, token: str, *, max_ratelimit_timeout: float = 60.0):
        self.token = token
        self.max_ratelimit_timeout = max_ratelimit_timeout
        self._http: HTTPClient | None = None
        self._login = asyncio.Lock()
        self.user_id: str | None = None
        self.refused = False  # the token got a 401: posting cannot work until a restart with another

    async def _client(self) -> HTTPClient:
        async with self._login:
            if self.refused:
                raise discord.LoginFailure("the token was refused before")
            if self._http is None:
                http = HTTPClient(asyncio.get_running_loop(), max_ratelimit_timeout=self.max_ratelimit_timeout)
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

    async def post(self, channel, card) -> PostResult:
        return await self._send(
            channel.channel_id,
            embeds=[card_embed(card)],
            view=_link_view(card_buttons(card)),
            nonce=nonce_for(channel, card.paper_id),
        )

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        return await self._send(channel.channel_id, content=safe(text, CONTENT_MAX))

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
                if (canonical_arxiv_id(str(embed.get("url") or "")) == paper_id
                        or needle in str(embed.get("description") or "")):
                    return str(message["id"])
        return None

    async def post_digest(self, digest: Digest) -> PostResult:
        ids = ",".join(card.paper_id for card in digest.cards)
        return await self._send(digest.channel.channel_id, embeds=[digest_embed(digest)],
                                nonce=nonce_for(digest.channel, f"digest:{ids}"))

    async def reply(self, channel_id: str, message_id: str, reply: Reply) -> PostResult:
        """Answer a message (link cards) with the reply's cards."""
        reference = discord.MessageReference(message_id=int(message_id), channel_id=int(channel_id),
                                             fail_if_not_exists=False).to_message_reference_dict()
        buttons = card_buttons(reply.cards[0]) if len(reply.cards) == 1 else []
        return await self._send(channel_id, embeds=reply_embeds(reply.cards),
                                view=_link_view(buttons) if buttons else None, message_reference=reference)

    async def _send(self, channel_id: str, **fields) -> PostResult:
        try:
            http = await self._client()
            params = handle_message_parameters(allowed_mentions=discord.AllowedMentions.none(), **fields)
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

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


# ---- slash commands -------------------------------------------------------------------------

WEEKDAY = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ZONES = sorted(available_timezones())


def build_command_group(on_command: CommandHandler, summaries: dict[str, str],
                        store_subscriptions: Callable[[ChannelRef], list]) -> app_commands.Group:
    """`/papers <subcommand>`: one subcommand per shared command, typed options.

    Every callback defers (Discord allows 3 seconds for the first answer), runs the shared
    handler and follows up ephemerally. Changing a channel needs Manage Channels, checked
    here: Discord's default_member_permissions applies to whole top-level commands only,
    and /papers also holds the lookups everyone may use.
    """
    group = app_commands.Group(name="papers", description="New machine-learning papers in this channel")

    def describe(name: str) -> str:
        return (summaries.get(name) or name)[:100]

    async def run(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        permissions = interaction.permissions
        request = CommandRequest(
            ChannelRef("discord", str(interaction.channel_id)), str(interaction.user.id), text,
            can_manage=bool(permissions and (permissions.manage_channels or permissions.administrator)),
        )
        reply = await on_command(request)
        await interaction.followup.send(content=reply.text[:CONTENT_MAX], embeds=reply_embeds(reply.cards),
                                        ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    async def subscription_ids(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        try:
            subs = store_subscriptions(ChannelRef("discord", str(interaction.channel_id)))
        except BotError as exc:  # a busy database: no suggestions this time, and no traceback
            log.warning("subscription autocomplete: %s", exc)
            return []
        choices = [app_commands.Choice(name=f"#{s.id} {s.query}"[:100], value=str(s.id)) for s in subs]
        choices.append(app_commands.Choice(name="all of them", value="all"))
        return [c for c in choices if current.lower() in c.name.lower()][:25]

    async def zones(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        wanted = current.lower()
        return [app_commands.Choice(name=z, value=z) for z in _ZONES if wanted in z.lower()][:25]

    @group.command(name="subscribe", description=describe("subscribe"))
    @app_commands.describe(query='e.g. diffusion, "large language model" -video, author:"Yann LeCun"',
                           backfill="also post this many recent matches now (1-20)")
    async def subscribe(interaction: discord.Interaction, query: str,
                        backfill: Optional[app_commands.Range[int, 1, 20]] = None):
        await run(interaction, f"subscribe {query}" + (f" --backfill {backfill}" if backfill else ""))

    @group.command(name="preview", description=describe("preview"))
    async def preview(interaction: discord.Interaction, query: str):
        await run(interaction, f"preview {query}")

    @group.command(name="unsubscribe", description=describe("unsubscribe"))
    @app_commands.autocomplete(subscription=subscription_ids)
    async def unsubscribe(interaction: discord.Interaction, subscription: str):
        await run(interaction, f"unsubscribe {subscription}")

    @group.command(name="mute", description=describe("mute"))
    @app_commands.autocomplete(subscription=subscription_ids)
    async def mute(interaction: discord.Interaction, subscription: str, term: str):
        await run(interaction, f"mute {subscription} {term}")

    @group.command(name="list", description=describe("list"))
    async def list_(interaction: discord.Interaction):
        await run(interaction, "list")

    @group.command(name="search", description=describe("search"))
    async def search(interaction: discord.Interaction, words: str):
        await run(interaction, f"search {words}")

    @group.command(name="show", description=describe("show"))
    async def show(interaction: discord.Interaction, paper: str):
        await run(interaction, f"show {paper}")

    @group.command(name="trending", description=describe("trending"))
    async def trending(interaction: discord.Interaction, period: Literal["today", "week", "month"] = "week"):
        await run(interaction, f"trending {period}")

    @group.command(name="digest", description=describe("digest"))
    @app_commands.describe(time="HH:MM, in the channel's time zone", day="for weekly digests")
    async def digest(interaction: discord.Interaction, mode: Literal["off", "daily", "weekly"],
                     time: Optional[str] = None, day: Optional[WEEKDAY] = None):
        parts = [mode] + ([day or "mon"] if mode == "weekly" else []) + ([time] if time and mode != "off" else [])
        await run(interaction, "digest " + " ".join(parts))

    @group.command(name="timezone", description=describe("timezone"))
    @app_commands.autocomplete(zone=zones)
    async def timezone(interaction: discord.Interaction, zone: str):
        await run(interaction, f"timezone {zone}")

    @group.command(name="pause", description=describe("pause"))
    async def pause(interaction: discord.Interaction):
        await run(interaction, "pause")

    @group.command(name="resume", description=describe("resume"))
    async def resume(interaction: discord.Interaction):
        await run(interaction, "resume")

    @group.command(name="status", description=describe("status"))
    async def status(interaction: discord.Interaction):
        await run(interaction, "status")

    @group.command(name="help", description=describe("help"))
    async def help_(interaction: discord.Interaction, command: Optional[str] = None):
        await run(interaction, f"help {command or ''}".strip())

    return group


_LINKS = re.compile(r"https?://(?:www\.)?(?:arxiv\.org/(?:abs|pdf)/|huggingface\.co/papers/)\S+")


def paper_links(text: str) -> list[str]:
    """Version-less arXiv ids of the arXiv and Hugging Face paper links in a message (at most 3)."""
    found: list[str] = []
    for link in _LINKS.findall(text):
        paper_id = canonical_arxiv_id(link)
        if paper_id and paper_id not in found:
            found.append(paper_id)
    return found[:3]


# Gateway close codes after which connecting again cannot help until someone acts.
PERMANENT_CLOSE_CODES = {
    4004: "Discord refused the token (gateway: Authentication failed)",
    4010: "the gateway refused the shard (4010 Invalid shard)",
    4011: "the gateway requires sharding (4011)",
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


class _Gateway(discord.Client):
    def __init__(self, *, intents: discord.Intents, group: app_commands.Group, guild_id: int | None,
                 on_command: CommandHandler, adapter: DiscordAdapter, gateway_url: str = "", sync: bool = True):
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(group)
        self.guild_id = guild_id
        self.on_command = on_command
        self.adapter = adapter
        self.gateway_url = gateway_url  # empty: ask GET /gateway/bot
        self.connected = False  # got READY at least once
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

    async def on_connect(self) -> None:
        if not self.connected:
            log.info("connected to the Discord gateway as %s: /papers commands are on", self.user)
        self.connected = True

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not message.content:
            return
        await answer_links(self.on_command, self.adapter, str(message.channel.id), str(message.id),
                           str(message.author.id), message.content)

    async def connect(self, *, reconnect: bool = True) -> None:
        """discord.py's connect loop, with the gateway address from the config and without its retries.

        discord.py 2.7 always opens wss://gateway.discord.gg (a class attribute) and retries
        failures itself, logging a traceback each time. Here the first connection goes to
        [discord] gateway_url, or where GET /gateway/bot on the REST base says; the
        reconnects the gateway asks for (op 7, op 9, a dropped socket) are made as
        discord.py makes them; any other failure is raised to start_discord, which logs it
        once and backs off.
        """
        if self.gateway_url:
            home = yarl.URL(self.gateway_url)
        else:
            home = yarl.URL((await self.http.get_bot_gateway())[1])
        params: dict = {"initial": True, "shard_id": self.shard_id, "gateway": home}
        loop = asyncio.get_running_loop()
        quick = 0
        while not self.is_closed():
            began = loop.time()
            try:
                self.ws = await asyncio.wait_for(DiscordWebSocket.from_client(self, **params), timeout=CONNECT_TIMEOUT)
                params["initial"] = False
                while True:
                    await self.ws.poll_event()
            except ReconnectWebSocket as exc:
                self.dispatch("disconnect")
                quick = quick + 1 if loop.time() - began < STABLE else 0
                if quick >= QUICK_DROPS:
                    raise ConnectionError("the gateway keeps closing the connection") from None
                ws = self.ws
                if ws is None or not exc.resume or ws.session_id is None:
                    params.update(resume=False, session=None, sequence=None, gateway=home)
                else:  # resume where READY said, unless the config names the one gateway to use
                    params.update(resume=True, session=ws.session_id, sequence=ws.sequence,
                                  gateway=home if self.gateway_url else ws.gateway)


async def answer_links(on_command: CommandHandler, adapter: DiscordAdapter, channel_id: str, message_id: str,
                       user_id: str, content: str) -> int:
    """Reply to a message with a card for each arXiv or Hugging Face paper link in it."""
    cards: list[Card] = []
    for paper_id in paper_links(content):
        reply = await on_command(CommandRequest(ChannelRef("discord", channel_id), user_id, f"show {paper_id}",
                                                can_manage=False))
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


async def start_discord(adapter: DiscordAdapter, config, on_command: CommandHandler, summaries: dict[str, str],
                        store_subscriptions) -> Running:
    """Connect the gateway for /papers (and link cards with the message-content intent) in the background.

    Returns at once; nothing here waits for Discord. The returned Running's close()
    stops the front-end within about a second in any state.
    """
    intents = discord.Intents.default()
    intents.message_content = config.discord.message_content

    def make_client(sync: bool) -> _Gateway:
        group = build_command_group(on_command, summaries, store_subscriptions)
        return _Gateway(intents=intents, group=group, guild_id=config.discord.dev_guild_id or None,
                        on_command=on_command, adapter=adapter, gateway_url=config.discord.gateway_url, sync=sync)

    frontend = DiscordFrontend(make_client, adapter.token)
    frontend.start()
    return Running(frontend.close, frontend=frontend)
