"""Slack: posting cards through the Web API, and /papers, link unfurls and mentions via slack-bolt.

Everything Slack-shaped stays in this module: bodies, events and SDK errors are turned
into CommandRequest / PostResult here. One AsyncApp runs on the bot's event loop, in
Socket Mode (the default: no public URL) or behind our own aiohttp endpoint in HTTP mode,
where every request's signature and timestamp are checked before anything runs.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

import handlers

from ..errors import StorageError
from ..http_guard import IDLE_TIMEOUT, READ_TIMEOUT, RejectLog, Served, serve
from ..models import (
    Card,
    ChannelRef,
    CommandRequest,
    Digest,
    PostResult,
    QueryPreview,
    SubscribeForm,
    ThreadRef,
    ThreadReply,
)
from . import TOKEN_REFUSED_WAIT, CommandHandler, Running
from .slack_oauth import (
    CLIENT_SECRET_ENV,
    TooManyInstalls,
    Workspaces,
    bot_tokens_revoked,
    busy_page,
    callback_pages,
    uninstalled_team,
)
from .slack_render import (
    ACTION_NOT_RELEVANT,
    ACTION_OPEN_FORM,
    ACTION_QUERY,
    ACTION_RUN,
    ACTION_SAVE,
    ACTION_UNSUBSCRIBE,
    BLOCK_QUERY,
    FALLBACK_MAX,
    FOLLOWUP_EVENT,
    MAX_BLOCKS,
    MODAL_SUBSCRIBE,
    PAPER_EVENT,
    card_blocks,
    card_text,
    digest_blocks,
    digest_people_blocks,
    digest_text,
    form_error,
    home_view,
    mentions,
    notice_text,
    reply_blocks,
    reply_text,
    result_modal,
    subscribe_modal,
    thread_reply_text,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

# Errors after which posting to the channel cannot work until someone acts.
CHANNEL_GONE = {"channel_not_found", "is_archived", "not_in_channel", "channel_is_archived"}
# The token itself was refused: nothing can be posted anywhere until it is fixed, so the
# papers wait (TOKEN_REFUSED_WAIT) rather than being given up.
TOKEN_REFUSED = {"invalid_auth", "not_authed", "token_revoked", "account_inactive"}
# Errors no retry will fix.
PERMANENT = CHANNEL_GONE | {"invalid_auth", "not_authed", "token_revoked", "account_inactive", "invalid_blocks",
                            "msg_too_long", "no_text", "restricted_action", "missing_scope"}


class SlackAdapter:
    """Posts cards and digests to Slack channels, at most one post a second per channel."""

    platform = "slack"

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        min_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        config: Config | None = None,
        workspaces: Workspaces | None = None,
    ):
        self.client = client  # single-token mode: it has the token; distribution: tokenless (OAuth, auth.test)
        self.config = config  # [slack] and the secrets, for the front-end; None: posting only
        self.workspaces = workspaces  # distribution ([slack] client_id): each channel's workspace and token
        self.min_interval = min_interval
        self.monotonic = monotonic
        self.sleep = sleep
        self._last_post: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        result = await self._post_card(channel, card)
        if not result.ok and result.error == "invalid_blocks" and card.thumbnail:
            # Slack fetches an image when the message is posted and refuses the whole message
            # when it cannot (a thumbnail gone, or too big): the card goes out without it.
            log.warning("Slack refused the card of %s with its thumbnail; posting it without", card.paper_id)
            result = await self._post_card(channel, replace(card, thumbnail=None))
        return result

    async def _post_card(self, channel: ChannelRef, card: Card) -> PostResult:
        blocks = [block.to_dict() for block in card_blocks(card, card.subscriptions)]
        return await self._post(channel.channel_id, text=card_text(card), blocks=blocks,
                                metadata={"event_type": PAPER_EVENT, "event_payload": {"paper_id": card.paper_id}})

    async def find_sent(self, channel: ChannelRef, paper_id: str, since: datetime) -> str | None:
        """The ts of our own message about `paper_id` posted since `since`, if there is one.

        Slack has no idempotency key, so after a crash mid-send this is how the bot learns
        whether the message went out (chat.postMessage carries the paper id as metadata).
        """
        client, _team = self._client_for(channel.channel_id)
        if client is None:
            return None
        cursor = None
        for _ in range(5):  # at most 1,000 messages back
            response = await client.conversations_history(
                channel=channel.channel_id, oldest=f"{since.timestamp() - 60:.6f}", limit=200,
                include_all_metadata=True, **({"cursor": cursor} if cursor else {}))
            messages: list[dict] = response.get("messages", [])
            for message in messages:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == PAPER_EVENT and (
                        payload.get("paper_id") == paper_id
                        or paper_id in str(payload.get("paper_ids", "")).split(",")):
                    return str(message["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        return await self._post(channel.channel_id, text=notice_text(text))

    async def post_in_thread(self, thread: ThreadRef, reply: ThreadReply) -> PostResult:
        """A reply in the card's thread (not sent to the channel), carrying its key as metadata."""
        return await self._post(thread.channel.channel_id, text=thread_reply_text(reply), thread_ts=thread.message_id,
                                metadata={"event_type": FOLLOWUP_EVENT, "event_payload": {"key": reply.key}})

    async def find_in_thread(self, thread: ThreadRef, reply: ThreadReply, since: datetime) -> str | None:
        """The ts of our `reply` in the card's thread since `since`, known by the key in its
        metadata (read with conversations.replies: replies are not in the channel's history)."""
        client, _team = self._client_for(thread.channel.channel_id)
        if client is None:
            return None
        cursor = None
        for _ in range(5):  # at most 1,000 replies
            response = await client.conversations_replies(
                channel=thread.channel.channel_id, ts=thread.message_id, oldest=f"{since.timestamp() - 60:.6f}",
                limit=200, include_all_metadata=True, **({"cursor": cursor} if cursor else {}))
            replies: list[dict] = response.get("messages", [])
            for message in replies:
                metadata = message.get("metadata") or {}
                if metadata.get("event_type") == FOLLOWUP_EVENT and (metadata.get("event_payload") or {}).get(
                        "key") == reply.key and message.get("ts") != thread.message_id:
                    return str(message["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def post_digest(self, digest: Digest) -> PostResult:
        people = digest_people_blocks(digest)
        blocks = [block.to_dict() for block in digest_blocks(digest)[:MAX_BLOCKS - len(people)] + people]
        ids = ",".join(card.paper_id for card in digest.cards)[:2000]
        who = mentions(digest)
        text = f"{who} {digest_text(digest, FALLBACK_MAX - len(who) - 1)}" if who else digest_text(digest)
        return await self._post(digest.channel.channel_id, text=text, blocks=blocks,
                                metadata={"event_type": PAPER_EVENT, "event_payload": {"paper_ids": ids}})

    async def start(self, on_command: CommandHandler) -> Running | None:
        """/papers, link unfurls and mentions, in the configured mode (see start_slack)."""
        if self.config is None:
            return None
        return await start_slack(self.client, self.config, on_command, workspaces=self.workspaces)

    async def close(self) -> None:
        return None  # AsyncWebClient opens a session per call: nothing stays open between posts

    def _client_for(self, channel_id: str) -> tuple[AsyncWebClient | None, str]:
        """The client that posts to the channel: the one token's, or (distribution) its workspace's,
        with the team; (None, why) when no installed workspace is known for it."""
        if self.workspaces is None:
            return self.client, ""
        return self.workspaces.client_for(channel_id)

    async def _post(self, channel_id: str, **message) -> PostResult:
        client, team = self._client_for(channel_id)
        if client is None:  # the workspace is unknown or uninstalled: the papers wait, none is lost
            return PostResult(ok=False, error=team, retryable=True, retry_after=WORKSPACE_WAIT)
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:  # Slack allows about one message a second per channel
            wait = self._last_post.get(channel_id, -1e9) + self.min_interval - self.monotonic()
            if wait > 0:
                await self.sleep(wait)
            try:
                response = await client.chat_postMessage(
                    channel=channel_id, unfurl_links=False, unfurl_media=False, **message
                )
            except SlackApiError as exc:
                result = failure(exc)
                if self.workspaces is not None and result.platform_wide:
                    # One workspace's token, not the platform's: the other workspaces go on.
                    error = result.error.replace("the bot token", f"workspace {team}'s token").replace(
                        "check SLACK_BOT_TOKEN", "install the app there again") if result.error else None
                    result = replace(result, platform_wide=False, retry_after=WORKSPACE_WAIT, error=error)
                return result
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                return PostResult(ok=False, error=f"cannot reach Slack ({type(exc).__name__})", retryable=True)
            finally:
                self._last_post[channel_id] = self.monotonic()
        return PostResult(ok=True, message_id=str(response.get("ts")))


# With many workspaces (distribution), a channel whose workspace is unknown, uninstalled or whose
# token was refused waits this long before its next try, not TOKEN_REFUSED_WAIT: a reinstall
# (which resumes the channels the uninstall paused) then delivers within a minute. Each try
# is one database read; the papers wait in the outbox, none is lost.
WORKSPACE_WAIT = 60.0


def failure(exc: SlackApiError) -> PostResult:
    """A Slack error as a PostResult: rate limits and outages retry, a gone channel pauses."""
    response = exc.response
    status = getattr(response, "status_code", 0)
    error = str((response.data or {}).get("error") if isinstance(response.data, dict) else "") or f"HTTP {status}"
    if status == 429 or error == "ratelimited":
        retry_after = _retry_after(response.headers)
        return PostResult(ok=False, error="rate limited by Slack", retryable=True, retry_after=retry_after)
    if error in TOKEN_REFUSED:
        return PostResult(ok=False, error=f"Slack refused the bot token ({error}): check SLACK_BOT_TOKEN",
                          retryable=True, retry_after=TOKEN_REFUSED_WAIT, platform_wide=True)
    return PostResult(ok=False, error=error, retryable=error not in PERMANENT, channel_gone=error in CHANNEL_GONE)


def _retry_after(headers) -> float:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, list) else value
            try:
                return max(float(value), 1.0)
            except (TypeError, ValueError):
                break
    return 1.0


# ---- the bolt app: slash command, link unfurls, mentions, overflow actions ---------------

_MENTION = re.compile(r"<@[A-Z0-9]+>")
_LINK = re.compile(r"<(https?://[^>|]+)(?:\|[^>]*)?>")


def typed(text: str) -> str:
    """Text as the person typed it: Slack sends a message's (and a slash command's) &, < and >
    as &amp;, &lt; and &gt;, its own markup being in < >; `upvotes>=10` came as `upvotes&gt;=10`
    (refused as a query) and `R&D` as the phrase "r amp d"."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text(value) -> bool:
    return isinstance(value, str) and value != ""


def _id(obj, key: str = "id") -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if _text(value) else None


def _runs_a_command(action_id: str) -> bool:
    """The card's Save / Not relevant buttons and a reply's buttons: each runs a command."""
    return action_id in (ACTION_SAVE, ACTION_NOT_RELEVANT) or action_id.startswith(ACTION_RUN + "_")


COMPOSER = "COMPOSER"  # link_shared's channel for a link in a message not sent yet (no channel of its own)


def _direct(channel_id: str) -> bool:
    """A direct message with the bot (an IM channel, D...): the person's own feed, theirs to manage."""
    return channel_id.startswith("D")


def payload_problem(body) -> str | None:
    """Why a payload our listeners would handle lacks what they need; None if it is fine.

    Only the kinds we listen to are checked (slash commands, block actions, link_shared,
    app_mention); anything else goes to bolt unchanged. Used before dispatch in HTTP mode
    and as a bolt middleware for Socket Mode, so a listener never meets a KeyError.
    """
    if not isinstance(body, dict):
        return "not an object"
    if "command" in body:
        if not all(_text(body.get(k)) for k in ("command", "channel_id", "user_id", "response_url")):
            return "slash command without command, channel_id, user_id or response_url"
        if not isinstance(body.get("text", ""), str):
            return "slash command text is not a string"
        return None
    kind = body.get("type")
    if kind in ("block_actions", "view_submission"):
        problem = modal_payload_problem(body)
        if problem is not None:
            return problem
    if kind == "block_actions":
        actions = body.get("actions")
        if not _id(body.get("user")):
            return "block action without a user"
        if not (isinstance(actions, list) and actions and all(isinstance(a, dict) and _text(a.get("action_id"))
                                                              for a in actions)):
            return "block action without actions"
        if any(a["action_id"] == ACTION_UNSUBSCRIBE or _runs_a_command(a["action_id"]) for a in actions):
            if not (_id(body.get("channel")) or _id(body.get("container"), "channel_id")):
                return "card action without a channel"
            if not _text(body.get("response_url")):
                return "card action without a response_url"
            if not all(isinstance(a.get("selected_option", {}), dict)
                       and isinstance(a.get("selected_option", {}).get("value", ""), str) for a in actions):
                return "overflow action with a malformed selected_option"
            if not all(isinstance(a.get("value", ""), str) for a in actions):
                return "button action with a malformed value"
        return None
    if kind == "event_callback":
        event = body.get("event")
        if not (isinstance(event, dict) and _text(event.get("type"))):
            return "event without a type"
        if not isinstance(event.get("user", ""), str):
            return "event user is not a string"
        if event["type"] == "link_shared":
            links = event.get("links", [])
            composer = _text(event.get("unfurl_id")) and _text(event.get("source"))
            if not ((composer or _text(event.get("channel")) and _text(event.get("message_ts")))
                    and isinstance(links, list)
                    and all(isinstance(link, dict) and isinstance(link.get("url", ""), str) for link in links)):
                return "link_shared without channel and message_ts (or unfurl_id and source), or links"
        if event["type"] == "app_home_opened" and not (_text(event.get("user"))
                                                       and isinstance(event.get("channel", ""), str)):
            return "app_home_opened without a user"
        if event["type"] == "app_mention":
            if not (_text(event.get("channel")) and _text(event.get("ts")) and isinstance(event.get("text", ""), str)
                    and isinstance(event.get("thread_ts", ""), str)):
                return "app_mention without channel or ts"
    return None


def build_bolt_app(
    client: AsyncWebClient,
    *,
    signing_secret: str,
    on_command: CommandHandler,
    command: str = "/papers",
    admins: tuple[str, ...] = (),
    oauth: AsyncOAuthSettings | None = None,
    workspaces: Workspaces | None = None,
) -> AsyncApp:
    """The AsyncApp with every listener.

    HTTP requests are verified before they reach it (see `start_http`); Socket Mode
    requests come over Slack's own authenticated socket. With `oauth` and `workspaces`
    (distribution), bolt finds each request's workspace token in the installations (its
    listeners' `client` has it), and the workspace of each channel a request comes from is
    recorded, for the posts to it.
    """
    app = AsyncApp(client=client, signing_secret=signing_secret, request_verification_enabled=False,
                   process_before_response=False, oauth_settings=oauth)

    def may_manage(user_id: str, channel_id: str = "") -> bool:
        return not admins or user_id in admins or _direct(channel_id)

    @app.middleware
    async def refuse_malformed(body, next):
        problem = payload_problem(body)
        if problem is not None:  # HTTP mode refuses these before dispatch; this covers Socket Mode
            log.warning("Slack: ignored a malformed payload (%s)", problem)
            return BoltResponse(status=400, body={"error": "bad request"})
        return await next()

    if workspaces is not None:
        @app.middleware
        async def note_workspace(context, next):
            """The channel a request comes from is in the request's workspace: posts there use its token."""
            team = context.enterprise_id if context.is_enterprise_install else context.team_id
            if context.channel_id and context.channel_id != COMPOSER and team:
                await workspaces.noted(context.channel_id, team)
            return await next()

        @app.event("app_uninstalled")
        async def uninstalled(body, context):
            workspaces.removed(uninstalled_team(body, context), "uninstalled the app")

        @app.event("tokens_revoked")
        async def revoked(body, event, context):
            if bot_tokens_revoked(event):
                workspaces.removed(uninstalled_team(body, context), "revoked the bot's token")

    @app.command(command)
    async def slash_command(ack, body, respond, client):
        await ack()  # within Slack's 3 seconds; the work happens after
        request = handlers.request_from_text(ChannelRef("slack", body["channel_id"]), body["user_id"],
                                             typed(body.get("text") or ""),
                                             can_manage=may_manage(body["user_id"], body["channel_id"]))
        reply = await on_command(request)
        if reply.form is not None and not reply.ok and await open_subscribe_modal(client, body.get("trigger_id"),
                                                                                 reply.form) is not None:
            return  # `subscribe` without a query: the form asks for it
        await respond(text=reply_text(reply), blocks=[b.to_dict() for b in reply_blocks(reply)],
                      response_type="ephemeral", replace_original=False)

    @app.action(ACTION_UNSUBSCRIBE)
    async def overflow(ack, body, respond):
        await ack()
        value = body["actions"][0].get("selected_option", {}).get("value", "")  # shape checked by payload_problem
        kind, _, rest = value.partition(":")
        if kind == "unsub":
            verb, args = "unsubscribe", {"subscription": rest}
        elif kind == "mute":
            sub_id, _, term = rest.partition(":")
            verb, args = "mute", {"subscription": sub_id, "term": term}
        else:
            return
        user = body["user"]["id"]
        channel = _id(body.get("channel")) or _id(body.get("container"), "channel_id")
        request = CommandRequest(ChannelRef("slack", channel), user, verb, args, may_manage(user, channel))
        reply = await on_command(request)
        await respond(text=reply_text(reply), response_type="ephemeral", replace_original=False)

    @app.action(re.compile(rf"^({ACTION_SAVE}|{ACTION_NOT_RELEVANT}|{ACTION_RUN}_\d+)$"))
    async def command_button(ack, body, respond):
        """Save / Not relevant on a card, or a reply's button (a mute offered): a typed request."""
        await ack()
        action = body["actions"][0]  # shape checked by payload_problem
        value = action.get("value", "")
        if action["action_id"] in (ACTION_SAVE, ACTION_NOT_RELEVANT):
            verb = "save" if action["action_id"] == ACTION_SAVE else "not-relevant"
            args: dict = {"paper": value}
        else:
            try:
                verb, args = json.loads(value)
            except (ValueError, TypeError):
                verb, args = "", {}
            if not (isinstance(verb, str) and isinstance(args, dict)
                    and all(isinstance(k, str) and isinstance(v, str) for k, v in args.items())):
                log.warning("Slack: ignored a button with a malformed value")
                return
        user = body["user"]["id"]
        channel = _id(body.get("channel")) or _id(body.get("container"), "channel_id")
        reply = await on_command(CommandRequest(ChannelRef("slack", channel), user, verb, args,
                                                may_manage(user, channel)))
        await respond(text=reply_text(reply), blocks=[b.to_dict() for b in reply_blocks(reply)],
                      response_type="ephemeral", replace_original=False)

    @app.event("app_home_opened")
    async def app_home(event, client):
        """The Home tab: the person's own subscriptions (`list --me`) and reading list (`saved --me`)."""
        if event.get("tab", "home") != "home":
            return
        user = event["user"]
        channel = ChannelRef("slack", "app-home")  # no channel of its own: every subscription says where it is
        sections = []
        for title, verb in (("Your subscriptions", "list"), ("Your reading list", "saved")):
            reply = await on_command(CommandRequest(channel, user, verb, {"me": 1}, can_manage=False))
            sections.append((title, reply))
        await client.views_publish(user_id=user, view=home_view(sections))

    add_subscribe_modal(app, on_command, may_manage)

    @app.action(re.compile(r"^papers_link_\d+$"))
    async def link_button(ack):
        await ack()  # link buttons open the URL in the browser; nothing to do here

    @app.event("link_shared")
    async def unfurl(event, client):
        """A link in a message, or in a message still being written (Slack sends those with
        `channel: COMPOSER` and a made-up message_ts): answered by the event's unfurl_id and
        source when it has them, as Slack asks, else by channel and message ts."""
        unfurls = {}
        channel = event.get("channel") or event.get("channel_id") or COMPOSER
        for link in event.get("links", [])[:5]:
            paper_id = handlers.paper_in_link(link.get("url", ""))
            if paper_id is None:
                continue
            reply = await on_command(handlers.show_request(ChannelRef("slack", channel), event.get("user", ""),
                                                           paper_id))
            if reply.cards:
                unfurls[link["url"]] = {"blocks": [b.to_dict() for b in card_blocks(reply.cards[0])]}
        if not unfurls:
            return
        if _text(event.get("unfurl_id")) and _text(event.get("source")):
            await client.chat_unfurl(unfurl_id=event["unfurl_id"], source=event["source"], unfurls=unfurls)
        else:
            await client.chat_unfurl(channel=channel, ts=event["message_ts"], unfurls=unfurls)

    @app.event("app_mention")
    async def mention(event, client):
        text = _MENTION.sub("", event.get("text", "")).strip()
        text = typed(_LINK.sub(r"\1", text))
        request = handlers.mention_request(ChannelRef("slack", event["channel"]), event.get("user", ""), text,
                                           can_manage=may_manage(event.get("user", ""), event["channel"]))
        reply = await on_command(request)
        thread = event.get("thread_ts") or event["ts"]
        blocks = [b.to_dict() for b in reply_blocks(reply)]
        if "me" in request.args and event.get("user"):
            # `list --me`, `saved --me`: a person's own subscriptions and reading list, from every
            # channel (private ones and their direct messages too): for their eyes, as /papers is.
            await client.chat_postEphemeral(channel=event["channel"], user=event["user"], thread_ts=thread,
                                            text=reply_text(reply), blocks=blocks)
            return
        await client.chat_postMessage(channel=event["channel"], thread_ts=thread, text=reply_text(reply),
                                      blocks=blocks, unfurl_links=False)

    return app


# ---- the subscribe modal: views.open, a live preview through views.update, view_submission ----

ACK_WITHIN = 2.5  # seconds a view_submission may take before it must be acknowledged (Slack allows 3)
_SLACK_ID = re.compile(r"[A-Z0-9]{2,30}")


def modal_metadata(channel: ChannelRef) -> str:
    """The modal's private_metadata: the channel it was opened from, where submitting subscribes."""
    return json.dumps({"channel": channel.channel_id})


def modal_channel(metadata) -> ChannelRef | None:
    """The channel in a modal's private_metadata, or None when it is not one we wrote."""
    try:
        value = json.loads(metadata) if isinstance(metadata, str) and len(metadata) <= 3000 else None
    except ValueError:
        return None
    channel = value.get("channel") if isinstance(value, dict) else None
    if not (isinstance(channel, str) and _SLACK_ID.fullmatch(channel)):
        return None
    return ChannelRef("slack", channel)


def modal_payload_problem(body: dict) -> str | None:
    """What a subscribe modal's payload lacks (its input's block_actions, its view_submission)."""
    view = body.get("view")
    if body.get("type") == "view_submission":
        if not _id(body.get("user")):
            return "view submission without a user"
        if not (isinstance(view, dict) and _text(view.get("id")) and isinstance(view.get("callback_id", ""), str)):
            return "view submission without a view"
        state = view.get("state", {})
        if not (isinstance(state, dict) and isinstance(state.get("values", {}), dict)):
            return "view submission with a malformed state"
        return None
    actions = body.get("actions")
    if isinstance(actions, list) and any(isinstance(a, dict) and a.get("action_id") == ACTION_QUERY for a in actions):
        if not (isinstance(view, dict) and _text(view.get("id")) and isinstance(view.get("hash", ""), str)
                and isinstance(view.get("private_metadata", ""), str)):
            return "query edit without its view"
        if not all(isinstance(a, dict) and isinstance(a.get("value") or "", str) for a in actions):
            return "query edit with a malformed value"
    return None


async def open_subscribe_modal(client: AsyncWebClient, trigger_id, form: SubscribeForm) -> _Edit | None:
    """Open the subscribe modal (views.open with the interaction's trigger_id): the view opened,
    as an edit of its query (to preview it), or None if it cannot be opened."""
    if not _text(trigger_id):
        return None
    try:
        response = await client.views_open(trigger_id=trigger_id,
                                           view=subscribe_modal(form, modal_metadata(form.channel)))
    except SlackApiError as exc:  # expired_trigger_id (over 3 seconds), a network hiccup...
        log.info("Slack: cannot open the subscribe form (%s)", (exc.response.data or {}).get("error")
                 if isinstance(exc.response.data, dict) else "error")
        return None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        log.info("Slack: cannot open the subscribe form (%s)", type(exc).__name__)
        return None
    view = response.get("view") or {}
    view_id, view_hash = view.get("id"), view.get("hash")
    return _Edit(view_id if isinstance(view_id, str) else "", view_hash if isinstance(view_hash, str) else "",
                 form.query, form.channel, "", False)


class _Edit:
    """One edit of a subscribe modal's query, as the block_actions payload gave it."""

    __slots__ = ("view_id", "hash", "query", "channel", "user", "can_manage", "client")

    def __init__(self, view_id: str, view_hash: str, query: str, channel: ChannelRef, user: str, can_manage: bool,
                 client: AsyncWebClient | None = None):
        self.view_id, self.hash, self.query = view_id, view_hash, query
        self.channel, self.user, self.can_manage = channel, user, can_manage
        self.client = client  # the request's (its workspace's token); None: the previews' own


class LivePreviews:
    """Runs the previews of the subscribe modals as their queries are edited.

    At most one preview runs at a time per user; edits arriving meanwhile replace each
    other, and only the newest is previewed next, so a fast typist costs one preview at a
    time and the modal always ends showing the last query typed. Each preview is the
    `preview` command (its work off the event loop, in handlers) and one views.update.
    """

    def __init__(self, client: AsyncWebClient, on_command: CommandHandler, max_views: int = 1000):
        self.client = client
        self.on_command = on_command
        self.max_views = max_views
        self.pending: dict[str, _Edit] = {}  # user -> the newest edit not previewed yet
        self.tasks: dict[str, asyncio.Task] = {}  # user -> the task previewing their edits
        self.hashes: dict[str, str] = {}  # view id -> the hash our last views.update of it returned
        self.updates = 0  # views.update calls made (for tests and logs)

    def edited(self, edit: _Edit) -> None:
        self.pending[edit.user] = edit
        if edit.user not in self.tasks:
            self.tasks[edit.user] = asyncio.get_running_loop().create_task(self._run(edit.user))

    async def idle(self) -> None:
        """Wait until every preview under way is shown (tests)."""
        while self.tasks:
            await asyncio.wait(list(self.tasks.values()))

    def forget(self, view_id: str) -> None:
        """The view was submitted: no preview of it is owed any more."""
        self.hashes.pop(view_id, None)
        for user, edit in list(self.pending.items()):
            if edit.view_id == view_id:
                del self.pending[user]

    async def _run(self, user: str) -> None:
        try:
            while (edit := self.pending.pop(user, None)) is not None:
                try:
                    await self._show(edit)
                except Exception:  # one failed preview must not end the user's later ones
                    log.exception("Slack: the subscribe form's preview failed")
        finally:
            self.tasks.pop(user, None)

    async def _show(self, edit: _Edit) -> None:
        query = edit.query.strip()
        if not query:
            form = handlers.subscribe_form(edit.channel)
        else:
            reply = await self.on_command(CommandRequest(edit.channel, edit.user, "preview", {"query": query},
                                                         edit.can_manage, live_preview=True))
            form = reply.form or handlers.subscribe_form(edit.channel, query,
                                                         QueryPreview(query, error=form_error(reply.text)))
        if self.pending.get(edit.user) is not None and self.pending[edit.user].view_id == edit.view_id:
            return  # a newer edit of this view is waiting: show that one instead
        view = subscribe_modal(form, modal_metadata(edit.channel), opening=False)
        try:
            response = await (edit.client or self.client).views_update(
                view_id=edit.view_id, hash=self.hashes.get(edit.view_id) or edit.hash or None, view=view)
        except SlackApiError as exc:
            error = (exc.response.data or {}).get("error") if isinstance(exc.response.data, dict) else None
            # hash_conflict: the view changed since (a newer edit brings the new hash); not_found: it was closed
            log.log(logging.DEBUG if error in ("hash_conflict", "not_found") else logging.WARNING,
                    "Slack: the subscribe form's preview was not shown (%s)", error)
            return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("Slack: the subscribe form's preview was not shown (%s)", type(exc).__name__)
            return
        self.updates += 1
        new_hash = (response.get("view") or {}).get("hash")
        if isinstance(new_hash, str):
            self.hashes.pop(edit.view_id, None)
            self.hashes[edit.view_id] = new_hash
            while len(self.hashes) > self.max_views:  # the oldest views are long closed
                self.hashes.pop(next(iter(self.hashes)))


def add_subscribe_modal(app: AsyncApp, on_command: CommandHandler,
                        may_manage: Callable[[str, str], bool]) -> LivePreviews:
    """The subscribe modal's listeners: the "Subscribe…" button, each edit of the query (a live
    preview), and the submission, which subscribes the channel the modal was opened from."""
    previews = LivePreviews(app.client, on_command)
    app.previews = previews  # type: ignore[attr-defined]  # for tests: LivePreviews.idle()

    @app.action(ACTION_OPEN_FORM)
    async def open_form(ack, body, client, respond):
        await ack()
        channel = _id(body.get("channel")) or _id(body.get("container"), "channel_id")
        if channel is None or not _SLACK_ID.fullmatch(channel):
            return
        user = body["user"]["id"]
        reply = await on_command(CommandRequest(ChannelRef("slack", channel), user, "subscribe", {},
                                                may_manage(user, channel)))  # the manage right, the rate limit
        button = next((a for a in body["actions"] if a.get("action_id") == ACTION_OPEN_FORM), {})
        query = button.get("value") if isinstance(button.get("value"), str) else ""
        form = replace(reply.form, query=query[:reply.form.max_length]) if reply.form is not None else None
        opened = await open_subscribe_modal(client, body.get("trigger_id"), form) if form is not None else None
        if opened is None:
            await respond(text=reply_text(reply), response_type="ephemeral", replace_original=False)
        elif opened.query.strip() and opened.view_id:  # show its preview at once, as if it had just been typed
            previews.edited(_Edit(opened.view_id, opened.hash, opened.query, opened.channel, user,
                                  may_manage(user, opened.channel.channel_id), client))

    @app.action(ACTION_QUERY)
    async def query_edited(ack, body, client):
        await ack()
        view = body["view"]  # shape checked by payload_problem
        channel = modal_channel(view.get("private_metadata"))
        if channel is None:
            log.warning("Slack: ignored an edit of a subscribe form without its channel")
            return
        user = body["user"]["id"]
        value = next((a.get("value") or "" for a in body["actions"] if a.get("action_id") == ACTION_QUERY), "")
        previews.edited(_Edit(view["id"], view.get("hash") or "", value[:1000], channel, user,
                              may_manage(user, channel.channel_id), client))

    @app.view(MODAL_SUBSCRIBE)
    async def submitted(ack, body, client):
        view = body["view"]  # shape checked by payload_problem
        previews.forget(view["id"])
        channel = modal_channel(view.get("private_metadata"))
        if channel is None:
            await ack(response_action="errors",
                      errors={BLOCK_QUERY: "This form has lost its channel: open it again with /papers subscribe."})
            return
        field = ((view.get("state") or {}).get("values") or {}).get(BLOCK_QUERY)
        value = field.get(ACTION_QUERY) if isinstance(field, dict) else None
        query = value.get("value") if isinstance(value, dict) else None
        user = body["user"]["id"]
        request = CommandRequest(channel, user, "subscribe", {"query": query if isinstance(query, str) else ""},
                                 may_manage(user, channel.channel_id))
        title = handlers.subscribe_form(channel).title
        task = asyncio.ensure_future(on_command(request))
        done, _ = await asyncio.wait({task}, timeout=ACK_WITHIN)
        if task in done:
            reply = task.result()
            if not reply.ok:  # the same reasons `/papers subscribe <query>` gives, under the input
                await ack(response_action="errors", errors={BLOCK_QUERY: form_error(reply.text)})
            else:
                await ack(response_action="update", view=result_modal(title, reply.text))
            return
        # Slow (a busy database, a long estimate): answer Slack now, show the result when it comes.
        await ack(response_action="update", view=result_modal(title, "Subscribing…"))
        reply = await task
        try:
            await client.views_update(view_id=view["id"], view=result_modal(title, reply.text))
        except (SlackApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.info("Slack: the subscribe form's result was not shown (%s)", type(exc).__name__)

    return previews


class _Clock(Clock):
    """slack_sdk's SignatureVerifier asks a clock object for now()."""

    def __init__(self, now: Callable[[], float]):
        self._now = now

    def now(self) -> float:
        return self._now()


def oauth_settings(config, workspaces: Workspaces) -> AsyncOAuthSettings:
    """bolt's install flow: our stores, our pages, every address from the config (oauth.v2.access
    and auth.test go to [slack] api_url through the app's client)."""
    slack = config.slack
    settings = AsyncOAuthSettings(
        client_id=slack.client_id, client_secret=config.secrets.get(CLIENT_SECRET_ENV), scopes=list(slack.scopes),
        redirect_uri=slack.redirect_uri or None, install_path=INSTALL_PATH, redirect_uri_path=REDIRECT_PATH,
        install_page_rendering_enabled=False, authorization_url=slack.authorize_url,
        installation_store=workspaces.installation_store, state_store=workspaces.state_store,
        state_expiration_seconds=workspaces.state_seconds,
        callback_options=callback_pages(INSTALL_PATH, slack.command), logger=log)
    # bolt checks a workspace's token with auth.test before each request it authorizes unless it
    # remembers the answer (by token: a new install brings a new token, an uninstall removes it).
    settings.authorize.cache_enabled = True  # type: ignore[attr-defined]  # AsyncInstallationStoreAuthorize's
    return settings


def make_web_client(token: str | None, api_url: str) -> AsyncWebClient:
    # 429s are handled by the dispatcher (retry after Retry-After, nothing blocks the loop);
    # connection resets get slack_sdk's one quick retry.
    return AsyncWebClient(token=token, base_url=api_url, timeout=20)


async def start_slack(client: AsyncWebClient, config, on_command: CommandHandler, *,
                      retry_first: float = 2.0, retry_max: float = 60.0, connect_timeout: float = 10.0,
                      check_every: float = 1.0, workspaces: Workspaces | None = None) -> Running | None:
    """Start the /papers front-end in the configured mode; None (and a clear log line) if it cannot.

    Returns at once: Socket Mode connects in a background task that retries with backoff
    (see `_SocketModeSupervisor`), so a firewalled or hanging WebSocket never holds up
    polling, posting or shutdown. `Running.close()` stops it within about two seconds.
    """
    slack = config.slack
    if slack.mode == "http":
        secret = config.secrets.get("SLACK_SIGNING_SECRET")
        if not secret:
            log.error("Slack HTTP mode needs SLACK_SIGNING_SECRET: /papers commands are off, posting still works")
            return None
        oauth = oauth_settings(config, workspaces) if workspaces is not None else None
        app = build_bolt_app(client, signing_secret=secret, on_command=on_command, command=slack.command,
                             admins=slack.admins, oauth=oauth, workspaces=workspaces)
        runner = await start_http(app, slack.port, signing_secret=secret, host=slack.host,
                                  oauth_flow=app.oauth_flow if oauth is not None else None)
        log.info("Slack: listening for /papers on %s port %d at /slack/events%s", slack.host, slack.port,
                 ", installs at /slack/install" if oauth is not None else "")
        return Running(runner.cleanup)
    app_token = config.secrets.get("SLACK_APP_TOKEN")
    if not app_token:
        log.error("Slack Socket Mode needs SLACK_APP_TOKEN (or set [slack] mode = \"http\"): "
                  "/papers commands are off, posting still works")
        return None
    app = build_bolt_app(client, signing_secret=config.secrets.get("SLACK_SIGNING_SECRET") or "unused-in-socket-mode",
                         on_command=on_command, command=slack.command, admins=slack.admins)
    # The WebSocket URL comes from apps.connections.open on `client`, whose base is [slack] api_url;
    # nothing else in the Socket Mode client has an address of its own.
    socket_client = _SocketModeClient(app_token, client, app.logger, connect_timeout=connect_timeout)
    _BoltSocketModeHandler(app, socket_client)
    supervisor = _SocketModeSupervisor(socket_client, retry_first=retry_first, retry_max=retry_max,
                                       check_every=check_every)
    task = asyncio.get_running_loop().create_task(supervisor.run(), name="slack-socket-mode")
    log.info("Slack: connecting in Socket Mode (in the background; polling and posting do not wait)")

    async def close() -> None:
        socket_client.closed = True  # the supervisor and the SDK's loops stop at their next turn
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
        closing = asyncio.ensure_future(socket_client.close())  # a WebSocket close waits 0.5 s at most
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        if not done:
            closing.cancel()
        elif closing.exception() is not None:  # stopping: note it, never hang on it
            log.debug("Slack Socket Mode close: %s", type(closing.exception()).__name__)
        if not socket_client.aiohttp_client_session.closed:
            await socket_client.aiohttp_client_session.close()

    return Running(close)


# ---- Socket Mode: one bounded connection attempt at a time, retried with backoff --------

# apps.connections.open errors that no retry will fix.
SOCKET_PERMANENT = PERMANENT | {"not_allowed_token_type", "no_permission", "access_denied", "org_login_required",
                                "two_factor_setup_required", "ekm_access_denied", "deprecated_endpoint"}


class _NoHello(Exception):
    """The WebSocket opened but Slack's `hello` did not come first."""


class _SocketModeClient(SocketModeClient):
    """slack_sdk's aiohttp Socket Mode client with `connect()` made one bounded attempt.

    slack_sdk's own connect() retries forever, every ping interval, with a full traceback
    each time and the same (possibly expired) URL; a WebSocket that accepts TCP but never
    answers holds each attempt for aiohttp's 5-minute default; closing waits up to 10 s for
    a close frame. Here an attempt (a fresh URL, the handshake, Slack's `hello`) has
    `connect_timeout` seconds, closing a socket 0.5 s, and `_SocketModeSupervisor` decides
    when to try again. The SDK's own reconnecting is off; its `disconnect` handling (Slack
    asking the app to move to a new connection) comes here and makes one attempt.
    """

    def __init__(self, app_token: str, web_client: AsyncWebClient, logger: logging.Logger, *,
                 connect_timeout: float, ping_interval: float = 10.0):
        super().__init__(app_token=app_token, logger=logger, web_client=web_client, auto_reconnect_enabled=False,
                         ping_interval=ping_interval)
        self.connect_timeout = connect_timeout
        self._connect_lock = asyncio.Lock()

    @property
    def connecting(self) -> bool:
        return self._connect_lock.locked()

    async def connect(self) -> None:
        """One attempt at a new connection (replacing the current one); raises on failure."""
        async with self._connect_lock:
            if not self.closed:
                await asyncio.wait_for(self._open(), self.connect_timeout)

    async def ensure_connected(self) -> bool:
        """Connect unless already connected; True when this call made the connection."""
        async with self._connect_lock:
            if self.closed or await self.is_connected():
                return False
            await asyncio.wait_for(self._open(), self.connect_timeout)
            return True

    async def connect_to_new_endpoint(self, force: bool = False) -> None:
        # The SDK calls this when Slack sends {"type": "disconnect"}: move now, and if that
        # fails leave it to the supervisor (which sees the connection gone) rather than raise.
        try:
            await self.connect()
        except Exception as exc:
            self.logger.debug("Socket Mode: moving to a new connection failed (%s)", type(exc).__name__)

    async def disconnect(self) -> None:
        # slack_sdk's logs "session () has been abandoned" even when there never was one.
        if self.current_session is not None:
            await self.current_session.close()

    async def issue_new_wss_url(self) -> str:
        # No sleeping on `ratelimited` in here: the supervisor waits Retry-After between attempts.
        response = await self.web_client.apps_connections_open(app_token=self.app_token)
        return response["url"]

    async def _open(self) -> None:
        old = self.current_session
        if old is not None and not old.closed:
            try:
                await asyncio.wait_for(old.close(), 1.0)
            except Exception:  # a broken old socket must not stop the new one
                pass
        if self.aiohttp_client_session.closed:
            self.aiohttp_client_session = aiohttp.ClientSession()
        self.wss_uri = await self.issue_new_wss_url()  # a fresh one every time: they are single-use
        extra: dict[str, Any] = {"timeout": aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0.5)} \
            if hasattr(aiohttp, "ClientWSTimeout") else {}
        session = await self.aiohttp_client_session.ws_connect(
            self.wss_uri, autoping=False, heartbeat=self.ping_interval, proxy=self.proxy,
            ssl=self.web_client.ssl if self.web_client.ssl is not None else True, **extra)
        try:
            await self._expect_hello(session)
        except BaseException:
            await asyncio.shield(session.close())
            raise
        self.current_session = session
        self.stale = False
        self.last_ping_pong_time = None
        # What slack_sdk's connect() does once connected: ping, then a new monitor and receiver.
        await session.ping(f"sdk-ping-pong:{time.time()}".encode())
        for name, make in (("current_session_monitor", self.monitor_current_session),
                           ("message_receiver", self.receive_messages)):
            previous = getattr(self, name)
            if previous is not None:
                previous.cancel()
            setattr(self, name, asyncio.ensure_future(make()))

    async def _expect_hello(self, session) -> None:
        while True:
            message = await session.receive()
            if message.type == aiohttp.WSMsgType.PING:
                await session.pong(message.data)
                continue
            if message.type == aiohttp.WSMsgType.PONG:
                continue
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    kind = json.loads(message.data).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "hello":
                    return
                raise _NoHello(f"Slack sent {str(kind)[:40]!r} before hello")
            raise _NoHello(f"the WebSocket closed before hello ({aiohttp.WSMsgType(message.type).name})")


class _BoltSocketModeHandler(AsyncSocketModeHandler):
    """bolt's handler (envelope -> AsyncApp -> ack) on our client instead of the one it would build."""

    def __init__(self, app: AsyncApp, client: _SocketModeClient):
        self.app = app
        self.app_token = client.app_token
        self.client = client
        # bolt hints handle() with the aiohttp SocketModeClient (which ours is), the list the base class.
        client.socket_mode_request_listeners.append(self.handle)  # type: ignore[arg-type]  # bolt's narrower hint


class _SocketModeSupervisor:
    """Keeps one Socket Mode connection up, with exponential backoff and jitter between failed
    attempts; gives up, with one error line, only when Slack refuses the app token.

    Logging stays bounded however long Slack is unreachable: a failure is logged (one line, no
    traceback) when its reason changes and after 10, 100, 1000 ... attempts, otherwise at DEBUG.
    A connection that drops within `stable_after` seconds counts as a failure, so a server that
    accepts and hangs up at once is retried with backoff too, never in a tight loop.
    """

    def __init__(self, client: _SocketModeClient, *, retry_first: float, retry_max: float,
                 check_every: float = 1.0, stable_after: float = 60.0, rng=None):
        self.client = client
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.check_every = check_every
        self.stable_after = stable_after
        self.rng = rng or random.Random()
        self.failures = 0
        self._last_reason: str | None = None
        self._warned = False

    def delay(self, retry_after: float = 0.0) -> float:
        base = min(self.retry_first * 2 ** max(self.failures - 1, 0), self.retry_max)
        return max(base * self.rng.uniform(0.8, 1.2), retry_after)

    def _failed(self, reason: str, retry_after: float = 0.0) -> float:
        self.failures += 1
        delay = self.delay(retry_after)
        loud = reason != self._last_reason or math.log10(self.failures).is_integer()
        self._last_reason = reason
        if loud:
            self._warned = True
            log.warning("Slack Socket Mode: %s; %sretrying in %.0fs (/papers waits; posting goes on)", reason,
                        f"{self.failures} failures in a row, " if self.failures > 1 else "", delay)
        else:
            log.debug("Slack Socket Mode: %s (%d in a row); retrying in %.1fs", reason, self.failures, delay)
        return delay

    def _connected(self, first: bool) -> None:
        if first:
            log.info("Slack: connected in Socket Mode")
        elif self._warned:
            log.info("Slack: Socket Mode connected again")
        else:
            log.debug("Slack: Socket Mode connected again")
        self._last_reason, self._warned = None, False

    async def run(self) -> None:
        client = self.client
        connected_at: float | None = None
        ever = False
        while not client.closed:
            if client.connecting or await client.is_connected():
                if connected_at is not None and time.monotonic() - connected_at >= self.stable_after:
                    self.failures = 0
                await asyncio.sleep(self.check_every)
                continue
            if connected_at is not None:  # it was up and now it is not
                lasted, connected_at = time.monotonic() - connected_at, None
                if lasted >= self.stable_after:
                    self.failures = 0
                    log.info("Slack Socket Mode: the connection was lost; reconnecting")
                else:
                    await asyncio.sleep(self._failed("the connection was lost soon after connecting"))
                    continue
            try:
                made = await client.ensure_connected()
            except SlackApiError as exc:
                error = str((exc.response.data or {}).get("error") if isinstance(exc.response.data, dict) else "")
                if error in SOCKET_PERMANENT:
                    hint = " (SLACK_APP_TOKEN must be an app-level xapp- token with connections:write)" \
                        if error in ("not_allowed_token_type", "missing_scope", "invalid_auth") else ""
                    log.error("Slack refused the Socket Mode connection: %s%s. /papers commands are off; "
                              "posting still works", error, hint)
                    return
                retry_after = _retry_after(exc.response.headers) if error == "ratelimited" else 0.0
                await asyncio.sleep(self._failed(f"apps.connections.open answered {error or 'an error'}",
                                                 retry_after))
                continue
            except asyncio.TimeoutError:
                await asyncio.sleep(self._failed(f"no connection and hello within {client.connect_timeout:g}s"))
                continue
            except Exception as exc:  # network, handshake, protocol: all worth another try later
                await asyncio.sleep(self._failed(_why(exc)))
                continue
            if made or await client.is_connected():
                connected_at = time.monotonic()
                self._connected(first=not ever)
                ever = True


def _why(exc: Exception) -> str:
    """A failed attempt in a few words (never the WebSocket URL: its query is a ticket)."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"the WebSocket handshake was refused (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = getattr(exc.os_error, "errno", None)
        reason = os.strerror(errno).lower() if errno else type(exc.os_error).__name__
        return f"cannot reach {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, _NoHello):
        return str(exc)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return f"cannot connect ({type(exc).__name__})"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"


def _oauth_request(request: web.Request) -> AsyncBoltRequest:
    """A browser's GET of an install page, as bolt's OAuth flow reads it (query and cookie)."""
    return AsyncBoltRequest(body="", query=request.query_string, headers=dict(request.headers))


# Slack refuses a timestamp more than 5 minutes from now; a signature seen within that
# window again is a replay.
REPLAY_WINDOW = 60 * 5
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class SeenSignatures:
    """The signatures of the requests already run, each kept until its timestamp is stale.

    Bounded: at most `max_entries` (about 250 bytes each). Only validly signed requests
    are remembered, so only Slack (or whoever holds the secret) can fill it; 20,000 in
    5 minutes is far beyond a bot's traffic. When full, new requests are refused (a replay
    must never get through) until old entries expire.
    """

    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self._expiry: list[tuple[int, str]] = []  # a heap: (last second the signature is valid, signature)
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, signature: str, timestamp: int, now: float) -> bool | None:
        """True the first time, False for a replay, None when memory is full."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if signature in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            return None
        self._seen.add(signature)
        heapq.heappush(self._expiry, (timestamp + REPLAY_WINDOW + 1, signature))
        return True


async def start_http(
    app: AsyncApp,
    port: int,
    *,
    signing_secret: str,
    host: str = "0.0.0.0",
    clock: Callable[[], float] | None = None,
    read_timeout: float = READ_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int | None = None,
    reject_log_interval: float = 60.0,
    oauth_flow: AsyncOAuthFlow | None = None,
) -> Served:
    """Serve POST /slack/events on our event loop; returns the server (await served.cleanup()).

    Every request must carry a valid `X-Slack-Signature` over its raw body, made within
    the last 5 minutes, and not seen before; anything else gets 401 before bolt (or
    anything else) sees it. A signed body bolt cannot parse, or one without the fields our
    listeners need, gets 400. Read timeout and connection cap: see bot/http_guard.py.
    Refusals are counted and summed up in one log line per `reject_log_interval`.
    With `oauth_flow` (distribution), GET /slack/install sends a browser to Slack's
    authorization page with a fresh OAuth state, and GET /slack/oauth_redirect completes the
    installation (bolt checks the state and its cookie, calls oauth.v2.access, stores it).
    """
    now = clock or time.time
    verifier = SignatureVerifier(signing_secret, clock=_Clock(now))
    seen = SeenSignatures()
    rejects = RejectLog("Slack HTTP endpoint", interval=reject_log_interval, logger=log)

    def refuse(status: int, reason: str) -> web.Response:
        rejects.note(reason)
        error = {401: "invalid request", 503: "busy, try again"}.get(status, "bad request")
        return web.json_response({"error": error}, status=status)

    async def events(request: web.Request) -> web.Response:
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        raw = await request.read()  # already read, within the read timeout, by the guard
        if not (_TIMESTAMP.fullmatch(timestamp) and _SIGNATURE.fullmatch(signature)):
            return refuse(401, "missing or malformed signature headers")
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return refuse(400, "body not UTF-8")
        if not verifier.is_valid(body, timestamp, signature):
            return refuse(401, "bad signature or stale timestamp")
        fresh = seen.first_time(signature, int(timestamp), now())
        if fresh is None:
            return refuse(503, "replay memory full")
        if not fresh:
            return refuse(401, "replayed request")
        try:
            bolt_request = AsyncBoltRequest(body=body, query=request.query_string, headers=dict(request.headers))
        except Exception as exc:  # bolt parses the body here: invalid JSON, odd shapes
            log.debug("unparsable signed Slack request: %s", type(exc).__name__)
            return refuse(400, "payload not parsable")
        if payload_problem(bolt_request.body) is not None:
            return refuse(400, "payload missing fields")
        return await to_aiohttp_response(await app.async_dispatch(bolt_request))

    max_body = 1024 * 1024  # Slack's payloads are a few kilobytes; a card message's actions, tens
    web_app = web.Application(client_max_size=max_body)
    web_app.router.add_post("/slack/events", events)
    if oauth_flow is not None:
        flow = oauth_flow

        async def install(request: web.Request) -> web.Response:
            try:
                return await to_aiohttp_response(await flow.handle_installation(_oauth_request(request)))
            except TooManyInstalls:
                rejects.note("too many install links at once")
            except StorageError as exc:  # the database busy or gone: say so, no traceback
                log.warning("Slack: an install link could not be made (%s)", exc)
            return await to_aiohttp_response(busy_page(INSTALL_PATH))

        async def oauth_redirect(request: web.Request) -> web.Response:
            try:
                return await to_aiohttp_response(await flow.handle_callback(_oauth_request(request)))
            except StorageError as exc:
                log.warning("Slack: an installation could not be stored (%s)", exc)
            return await to_aiohttp_response(busy_page(INSTALL_PATH))

        web_app.router.add_get(INSTALL_PATH, install)
        web_app.router.add_get(REDIRECT_PATH, oauth_redirect)
    return await serve(web_app, host, port, name="Slack HTTP endpoint", read_timeout=read_timeout,
                       idle_timeout=idle_timeout,
                       max_connections=max_connections, rejects=rejects, max_body=max_body)
