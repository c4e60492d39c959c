"""Discord rendering: cards and digests as embeds within Discord's limits. Pure.

Markdown in outside text is escaped; mentions in embeds never ping, and every message is
sent with allowed_mentions none as well (see discord_adapter).
"""

from __future__ import annotations

from urllib.parse import quote

import discord
from discord.utils import escape_markdown, escape_mentions

from ..cards import shorten
from ..models import Card, Digest, ThreadReply

TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
AUTHOR_MAX = 256
TOTAL_MAX = 6000
EMBEDS_MAX = 10
CONTENT_MAX = 2000

COLOURS = {"huggingface": 0xFFD21E, "arxiv": 0xB31B1B}  # Hugging Face yellow, arXiv red


def safe(text: str, limit: int) -> str:
    """Escape markdown and mentions, then cut to `limit` without splitting an escape."""
    escaped = escape_mentions(escape_markdown(text))
    if len(escaped) <= limit:
        return escaped
    cut = text
    while len(escaped) > limit:
        cut = shorten(cut, max(1, len(cut) - max(8, len(escaped) - limit)))
        escaped = escape_mentions(escape_markdown(cut))
    return escaped


def thread_reply_content(reply: ThreadReply) -> str:
    """A reply to a card: its text escaped and bounded, then its link (in <>: no preview)."""
    text = safe(reply.text, 500)
    if reply.link is None:
        return text
    url = "".join(c if c.isprintable() and c not in " <>" else quote(c, safe="") for c in reply.link.url[:1000])
    return f"{text}: <{url}>"


def embed_size(embed: discord.Embed) -> int:
    """The characters Discord counts towards its 6,000 per message."""
    return len(embed)


def card_embed(card: Card) -> discord.Embed:
    embed = discord.Embed(
        title=safe(card.title, TITLE_MAX),
        url=card.url,
        description=safe(card.body, 1500),
        colour=COLOURS.get(card.source, 0x5865F2),
    )
    embed.set_author(name=safe(card.authors, AUTHOR_MAX))
    if card.upvotes is not None:
        embed.add_field(name="Upvotes", value=f"▲ {card.upvotes}", inline=True)
    embed.add_field(name="arXiv", value=card.paper_id, inline=True)
    if card.reason:
        embed.add_field(name="Why", value=safe(f"Matched {card.reason}", FIELD_VALUE_MAX), inline=False)
    if card.thumbnail:
        embed.set_thumbnail(url=card.thumbnail)
    return embed


def card_buttons(card: Card) -> list[tuple[str, str]]:
    """(label, url) of the link buttons: arXiv, PDF, Hugging Face, code."""
    return [(link.label[:80], link.url) for link in card.links[:5]]


def digest_embed(digest: Digest) -> discord.Embed:
    """One embed: a line per paper, as many as fit, and how many more there are."""
    lines: list[str] = []
    used = 0
    for card in digest.cards:
        votes = f" · ▲ {card.upvotes}" if card.upvotes is not None else ""
        line = f"• [{safe(shorten(card.title, 110), 150)}]({card.url}){votes}"
        if used + len(line) + 1 > DESCRIPTION_MAX - 100:
            break
        lines.append(line)
        used += len(line) + 1
    embed = discord.Embed(title=safe(digest.title, TITLE_MAX), description="\n".join(lines), colour=0x5865F2)
    rest = len(digest.cards) - len(lines)
    if rest or digest.note:
        embed.set_footer(text=(digest.note or f"and {rest} more: see /papers search")[:FOOTER_MAX])
    return embed


def reply_embeds(cards: tuple[Card, ...]) -> list[discord.Embed]:
    """Cards for a command reply: at most 10 embeds and 6,000 characters in all."""
    embeds: list[discord.Embed] = []
    total = 0
    for card in cards[:EMBEDS_MAX]:
        embed = card_embed(card)
        if total + embed_size(embed) > TOTAL_MAX:
            break
        embeds.append(embed)
        total += embed_size(embed)
    return embeds
