"""Console adapter: cards as readable text on stdout, for local runs and the CLI."""

from __future__ import annotations

import secrets
import sys
import textwrap
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from ..models import Card, ChannelRef, Digest, PostResult, Reply, ThreadRef, ThreadReply
from ..text import plural

if TYPE_CHECKING:
    from . import CommandHandler, Running

WIDTH = 88


def terminal_safe(text: str) -> str:
    """Drop control characters (ESC and friends), so outside text cannot drive the terminal."""
    return "".join(c for c in text if c == "\n" or unicodedata.category(c)[0] != "C")


def render_card(card: Card, channel: ChannelRef | None = None) -> str:
    """A card as plain text. Pure."""
    head = f"[{channel.key}] " if channel else ""
    lines = [f"{head}{card.title}", f"  {card.authors}"]
    meta = [f"arXiv:{card.paper_id}"]
    if card.upvotes is not None:
        meta.append(f"▲ {card.upvotes}")
    if card.comments is not None:
        meta.append(plural(card.comments, "comment"))
    meta += [x for x in (card.organization, ", ".join(card.categories)) if x]
    if card.listed_on:
        meta.append(f"listed {card.listed_on.isoformat()}")
    lines.append("  " + " · ".join(meta))
    body = f"{card.body_label}: {card.body}" if card.body_label else card.body
    lines += textwrap.wrap(body, WIDTH, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
    lines += [f"  {link.label}: {link.url}" for link in card.links]
    if card.reason:
        lines.append(f"  Matched {card.reason}")
        if card.snippet:
            lines.append(f"  From the abstract: “{card.snippet}”")
    if card.mentions:  # the --me subscribers, as Slack's and Discord's cards say "For <@...>"
        lines.append(f"  For {_people(card.mentions)}")
    return terminal_safe("\n".join(lines))


def _people(users: tuple[str, ...]) -> str:
    return ", ".join(f"@{user}" for user in users[:20]) + (f" and {len(users) - 20} more" if len(users) > 20 else "")


def render_digest(digest: Digest) -> str:
    """A digest as a compact list. Pure."""
    lines = [f"[{digest.channel.key}] {digest.title}"] + ([digest.order] if digest.order else [])
    for card in digest.cards:
        votes = f" ▲ {card.upvotes}" if card.upvotes is not None else ""
        lines.append(f"• {card.title} ({card.url}){votes}")
        if card.reason:
            lines.append(f"    Matched {card.reason}")
    if digest.note:
        lines.append(digest.note)
    if digest.mentions:
        lines.append(f"For {_people(digest.mentions)}")
    return terminal_safe("\n".join(lines))


def render_reply(reply: Reply) -> str:
    parts = [terminal_safe(reply.text)]
    parts += [render_card(card) for card in reply.cards]
    return "\n\n".join(p for p in parts if p)


class ConsoleAdapter:
    platform = "console"

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self.posted = 0
        # Message ids are stored (deliveries, follow-ups' threads) and outlive the process: a count
        # from 1 alone gave the next run's first card the id of this run's, and a card sharing its
        # id with another counts as a digest's (no follow-ups). A prefix of this run's makes them unique.
        self.run = secrets.token_hex(4)

    def _message_id(self) -> str:
        self.posted += 1
        return f"console-{self.run}-{self.posted}"

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        stream = self.stream or sys.stdout
        stream.write("─" * 40 + "\n" + render_card(card, channel) + "\n")
        stream.flush()
        return PostResult(ok=True, message_id=self._message_id())

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        stream = self.stream or sys.stdout
        stream.write(terminal_safe(f"[{channel.key}] {text}") + "\n")
        stream.flush()
        return PostResult(ok=True, message_id=self._message_id())

    async def post_digest(self, digest: Digest) -> PostResult:
        stream = self.stream or sys.stdout
        stream.write("─" * 40 + "\n" + render_digest(digest) + "\n")
        stream.flush()
        return PostResult(ok=True, message_id=self._message_id())

    async def post_in_thread(self, thread: ThreadRef, reply: ThreadReply) -> PostResult:
        stream = self.stream or sys.stdout
        link = f": {reply.link.url}" if reply.link else ""
        stream.write(terminal_safe(f"[{thread.channel.key}] ↳ {thread.message_id}: {reply.text}{link}") + "\n")
        stream.flush()
        return PostResult(ok=True, message_id=self._message_id())

    async def find_in_thread(self, thread: ThreadRef, reply: ThreadReply, since: datetime) -> str | None:
        return None  # no history here either: an interrupted reply is printed again

    async def find_sent(self, channel: ChannelRef, paper_id: str, since: datetime) -> str | None:
        return None  # a terminal keeps no history to look in: an interrupted card is printed again

    async def start(self, on_command: CommandHandler) -> Running | None:
        return None  # commands come from `papers-bot command`, not from a front-end

    async def close(self) -> None:
        return None  # every write is flushed already; the stream is not ours to close
