"""What chat front-ends need besides running a command: paper links in messages, completions.

Adapters call these instead of reaching into bot.sources or storage: a pasted arXiv or
Hugging Face link becomes a typed `show` request, a bare paper id in a mention becomes one,
and Discord's autocomplete asks `complete()` for suggestions.
"""

from __future__ import annotations

import logging
import re

from bot.digest import zone_names
from bot.errors import BotError
from bot.models import ChannelRef, CommandRequest
from bot.sources.ids import canonical_arxiv_id

from .base import COMMANDS, Context, request_from_text

log = logging.getLogger(__name__)

MAX_LINKS = 3  # cards answered for one message
MAX_CHOICES = 25  # what Discord shows

_LINKS = re.compile(r"https?://(?:www\.)?(?:arxiv\.org/(?:abs|pdf)/|huggingface\.co/papers/)\S+")


def paper_in_link(url: str) -> str | None:
    """The version-less arXiv id an arXiv, Hugging Face or PDF link (or a bare id) names, else None."""
    return canonical_arxiv_id(url)


def paper_links(text: str) -> list[str]:
    """Version-less arXiv ids of the arXiv and Hugging Face paper links in a message (at most 3)."""
    found: list[str] = []
    for link in _LINKS.findall(text):
        paper_id = canonical_arxiv_id(link)
        if paper_id and paper_id not in found:
            found.append(paper_id)
    return found[:MAX_LINKS]


def show_request(channel: ChannelRef, user_id: str, paper_id: str) -> CommandRequest:
    """The card for a paper someone linked: anyone may ask, nothing changes."""
    return CommandRequest(channel, user_id, "show", {"paper": paper_id}, can_manage=False)


def mention_request(channel: ChannelRef, user_id: str, text: str, can_manage: bool) -> CommandRequest:
    """A message addressed to the bot: a command, or a bare paper id or link meaning `show` it."""
    first = text.split()[0] if text.split() else ""
    if first.lower() not in COMMANDS and canonical_arxiv_id(first):
        return CommandRequest(channel, user_id, "show", {"paper": first}, can_manage, text=text)
    return request_from_text(channel, user_id, text or "help", can_manage)


def complete(ctx: Context, channel: ChannelRef, verb: str, param: str, typed: str) -> list[tuple[str, str]]:
    """Suggestions (label, value) for a parameter being typed, for front-ends that offer them.

    The parameter's declared `complete` source says what to suggest: this channel's
    subscriptions ("subscriptions", "subscriptions or all") or time zones. A busy database
    means no suggestions this time, not an error.
    """
    cmd = COMMANDS.get(verb)
    declared = cmd.param(param) if cmd else None
    source = declared.complete if declared else None
    wanted = typed.lower()
    choices: list[tuple[str, str]] = []
    if source in ("subscriptions", "subscriptions or all"):
        try:
            subs = ctx.store.subscriptions(channel)
        except BotError as exc:
            log.warning("subscription suggestions: %s", exc)
            return []
        choices = [(f"#{s.id} {s.query}"[:100], str(s.id)) for s in subs]
        if source == "subscriptions or all":
            choices.append(("all of them", "all"))
        return [c for c in choices if wanted in c[0].lower()][:MAX_CHOICES]
    if source == "time zones":
        return [(z, z) for z in zone_names() if wanted in z.lower()][:MAX_CHOICES]
    return []
