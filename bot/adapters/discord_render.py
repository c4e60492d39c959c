"""Discord rendering: cards and digests as embeds within Discord's limits. Pure.

Markdown in outside text is escaped; mentions in embeds never ping, and every message is
sent with allowed_mentions none as well (see discord_adapter).
"""

from __future__ import annotations

import re
from urllib.parse import quote

import discord
from discord.utils import escape_markdown, escape_mentions

from ..cards import shorten
from ..models import Card, Digest, SubscribeForm, ThreadReply
from ..text import plural

TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
AUTHOR_MAX = 256
TOTAL_MAX = 6000
EMBEDS_MAX = 10
CONTENT_MAX = 2000
# A link button's URL: Discord refuses the whole message (HTTP 400, not retried) when one is
# longer, so such a link (a project page's, say) is left out rather than the card lost.
BUTTON_URL_MAX = 512

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


_CODE_SPAN = re.compile(r"(`[^`]*`)")
_MASKED_LINK = re.compile(r"\[(?=[^\[\]\n]*\]\()")  # the [ of [text](url)


def unlinked(text: str) -> str:
    """A reply's text with no masked link `[text](url)` outside its code spans: a paper's title
    is quoted in replies as it is (`saved`, `save`, a subscription's examples), and as a link
    it would show any text over any address. Its [ is escaped, as escape_markdown does."""
    if "](" not in text:
        return text
    return "".join(part if part.startswith("`") else _MASKED_LINK.sub(r"\\[", part)
                   for part in _CODE_SPAN.split(text))


def reply_content(text: str, limit: int = CONTENT_MAX) -> str:
    """A command reply's text as a message's content (markdown: it is ours, its quotes are in
    code spans; a title's masked link is escaped), within Discord's 2,000 characters (or
    `limit`): whole lines, and how many more there were, rather than a cut mid-line
    (mid-code-span) at the limit."""
    text = unlinked(text)
    if len(text) <= limit:
        return text
    lines = text.split("\n")
    kept: list[str] = []
    used = 0
    while len(kept) < len(lines):
        more = f"\n… and {plural(len(lines) - len(kept) - 1, 'more line')}"
        if used + len(lines[len(kept)]) + len(more) > limit:
            break
        used += len(lines[len(kept)]) + 1
        kept.append(lines[len(kept)])
    rest = len(lines) - len(kept)
    more = f"\n… and {plural(rest, 'more line')}"
    if not kept:  # its first line alone is too long: that line, cut
        return shorten(lines[0], limit - len(more)) + (more if rest > 1 else "")
    return "\n".join(kept) + more


def reply_message(text: str, cards: tuple[Card, ...]) -> tuple[str, list[discord.Embed]]:
    """A command reply as a message: its text as content and its cards as embeds; a text too
    long for the content (`help`, 2,300 characters; `list` of many subscriptions) and with no
    cards goes in an embed's description instead, which holds 4,096."""
    if len(text) <= CONTENT_MAX or cards:
        return reply_content(text), reply_embeds(cards)
    return "", [discord.Embed(description=reply_content(text, DESCRIPTION_MAX), colour=0x5865F2)]


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
    """One embed, at most about 3,600 characters (Discord counts 6,000 a message)."""
    label = f"**{card.body_label}:** " if card.body_label else ""
    embed = discord.Embed(
        title=safe(card.title, TITLE_MAX),
        url=card.url,
        description=label + safe(card.body, 1500),
        colour=COLOURS.get(card.source, 0x5865F2),
    )
    embed.set_author(name=safe(card.authors, AUTHOR_MAX))
    if card.upvotes is not None:
        embed.add_field(name="Upvotes", value=f"▲ {card.upvotes}", inline=True)
    if card.comments is not None:
        embed.add_field(name="Comments", value=f"💬 {card.comments}", inline=True)
    embed.add_field(name="arXiv", value=card.paper_id, inline=True)
    if card.categories:
        embed.add_field(name="Categories", value=safe(", ".join(card.categories), 200), inline=True)
    if card.organization:
        embed.add_field(name="Organization", value=safe(card.organization, 200), inline=True)
    if card.listed_on:
        embed.add_field(name="Listed", value=card.listed_on.isoformat(), inline=True)
    if card.reason:
        why = safe(f"Matched {card.reason}", 500)
        if card.snippet:
            why += "\nFrom the abstract: “" + safe(card.snippet, 400) + "”"
        embed.add_field(name="Why", value=why[:FIELD_VALUE_MAX], inline=False)
    if card.thumbnail:
        embed.set_thumbnail(url=card.thumbnail)
    return embed


def card_buttons(card: Card) -> list[tuple[str, str]]:
    """(label, url) of the link buttons: arXiv, PDF, Hugging Face, code, project page."""
    return [(link.label[:80], link.url) for link in card.links if len(link.url) <= BUTTON_URL_MAX][:5]


def digest_embed(digest: Digest) -> discord.Embed:
    """One embed: a line per paper, as many as fit, and how many more there are."""
    lines: list[str] = []
    order = f"*{safe(digest.order, 300)}*\n" if digest.order else ""
    used = len(order)
    for card in digest.cards:
        votes = f" · ▲ {card.upvotes}" if card.upvotes is not None else ""
        line = f"• [{safe(shorten(card.title, 110), 150)}]({card.url}){votes}"
        if used + len(line) + 1 > DESCRIPTION_MAX - 100:
            break
        lines.append(line)
        used += len(line) + 1
    embed = discord.Embed(title=safe(digest.title, TITLE_MAX), description=order + "\n".join(lines),
                          colour=0x5865F2)
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


def preview_embed(form: SubscribeForm) -> discord.Embed:
    """The subscribe form's preview, shown after the modal is submitted (Discord modals cannot
    change while open): why the query cannot be used, or the query as understood, the
    estimate and the newest matching papers."""
    preview = form.preview
    if preview is None:
        return discord.Embed(title=safe(form.title, TITLE_MAX), description=safe(form.waiting, 1500), colour=0x5865F2)
    if preview.error is not None:
        return discord.Embed(title=safe(form.title, TITLE_MAX), colour=0xD93F0B,
                             description=safe(f"Cannot use “{shorten(preview.query, 600)}”: {preview.error}", 1500))
    lines = [f"**Understood as:** {safe(preview.normalized, 1000)}", safe(preview.estimate, 600)]
    for card in preview.examples[:5]:
        votes = f" · ▲ {card.upvotes}" if card.upvotes is not None else ""
        lines.append(f"• [{safe(shorten(card.title, 110), 150)}]({card.url}){votes}")
    return discord.Embed(title=safe(form.title, TITLE_MAX), description="\n".join(lines)[:DESCRIPTION_MAX],
                         colour=0x5865F2)
