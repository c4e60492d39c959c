"""Slack rendering: cards and digests as Block Kit, built with slack_sdk's models. Pure.

Outside text (titles, abstracts, authors, queries) is escaped for mrkdwn: `&`, `<` and
`>` become entities, so `<!channel>` or `<@U123>` in a title pings nobody and no link
can be smuggled in. Every text is cut to Slack's limits.
"""

from __future__ import annotations

import json
import re

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    Option,
    OverflowMenuElement,
    PlainTextObject,
    SectionBlock,
)

from ..cards import shorten
from ..models import Action, Card, Digest, Reply, SubscriptionRef
from ..text import plural

HEADER_MAX = 150  # header block plain_text
SECTION_MAX = 3000  # section text
CONTEXT_MAX = 2000
BUTTON_MAX = 75
MAX_BLOCKS = 50
FALLBACK_MAX = 3000
PAPER_EVENT = "papers_bot_paper"  # message metadata event type: the bot knows its own posts

ACTION_UNSUBSCRIBE = "papers_overflow"
ACTION_SAVE = "papers_save"  # value: the paper id
ACTION_NOT_RELEVANT = "papers_not_relevant"  # value: the paper id
ACTION_RUN = "papers_run"  # a Reply's Action; value: JSON [verb, {name: value}]
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{1,20}")


def escape(text: str) -> str:
    """Escape outside text for Slack mrkdwn and plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn_cut(text: str, limit: int) -> str:
    """Escape, then cut so that no entity is split and the result fits `limit`."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    cut = shorten(text, limit)
    while len(escape(cut)) > limit:
        cut = shorten(cut, len(cut) - max(10, len(escape(cut)) - limit))
    return escape(cut)


def _link(url: str, label: str) -> str:
    # Our own URLs (arxiv.org, huggingface.co, https links from sources); `|` and `>` would
    # end the link early, so they are percent-encoded.
    safe = url.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    return f"<{safe}|{escape(label)}>"


def card_blocks(card: Card, subscriptions: tuple[SubscriptionRef, ...] = ()) -> list[Block]:
    """Header, abstract, facts, buttons (and an overflow to unsubscribe the matching queries)."""
    blocks: list[Block] = [
        # Slack decodes the three entities in plain text too: escaping keeps `<!channel>` inert.
        HeaderBlock(text=PlainTextObject(text=_mrkdwn_cut(card.title, HEADER_MAX), emoji=False)),
        SectionBlock(text=MarkdownTextObject(text=_mrkdwn_cut(card.body, SECTION_MAX))),
    ]
    facts = [f"*{_mrkdwn_cut(card.authors, 600)}*", f"arXiv:{card.paper_id}"]
    if card.upvotes is not None:
        facts.append(f"▲ {plural(card.upvotes, 'upvote')}")
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=" · ".join(facts)[:CONTEXT_MAX])]))
    if card.reason:
        reason = _mrkdwn_cut(f"Matched {card.reason}", CONTEXT_MAX)
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=reason)]))
    buttons = [
        ButtonElement(text=PlainTextObject(text=link.label[:BUTTON_MAX]), url=link.url,
                      action_id=f"papers_link_{i}", value=card.paper_id)
        for i, link in enumerate(card.links[:4])
    ]
    elements: list = list(buttons)
    if subscriptions:
        # "Unsubscribe this query" for each matching subscription, and "Mute this term":
        # exclude one of the paper's categories from the first one (at most 5 options).
        options = [
            Option(text=PlainTextObject(text=shorten(f"Unsubscribe #{sub.id} {sub.query}", BUTTON_MAX)),
                   value=f"unsub:{sub.id}")
            for sub in subscriptions[:3]
        ]
        first = subscriptions[0].id
        options += [
            Option(text=PlainTextObject(text=shorten(f"Mute cat:{cat} in #{first}", BUTTON_MAX)),
                   value=f"mute:{first}:cat:{cat}")
            for cat in card.categories[: 5 - len(options)]
        ]
        elements.append(OverflowMenuElement(action_id=ACTION_UNSUBSCRIBE, options=options))
    blocks.append(ActionsBlock(elements=elements, block_id=f"paper:{card.paper_id}"[:255]))
    return blocks + people_blocks(card)


def mentions(item: Card | Digest) -> str:
    """`<@U1> <@U2>`: the people who subscribed with --me; anything not a Slack user id is dropped."""
    return " ".join(f"<@{user}>" for user in item.mentions[:20] if _SLACK_USER.fullmatch(user))


def digest_people_blocks(digest: Digest) -> list[Block]:
    """The digest's --me subscribers, mentioned (after its papers)."""
    who = mentions(digest)
    return [ContextBlock(elements=[MarkdownTextObject(text=f"For {who}")])] if who else []


def people_blocks(card: Card) -> list[Block]:
    """Who the card is for (the --me subscribers, mentioned), and its Save / Not relevant buttons."""
    blocks: list[Block] = []
    if mentions(card):
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"For {mentions(card)}")]))
    blocks.append(ActionsBlock(block_id=f"feedback:{card.paper_id}"[:255], elements=[
        ButtonElement(text=PlainTextObject(text="Save"), action_id=ACTION_SAVE, value=card.paper_id),
        ButtonElement(text=PlainTextObject(text="Not relevant"), action_id=ACTION_NOT_RELEVANT, value=card.paper_id),
    ]))
    return blocks


def action_value(action: Action) -> str:
    return json.dumps([action.verb, dict(action.args)], separators=(",", ":"))


def actions_block(actions: tuple[Action, ...]) -> ActionsBlock:
    return ActionsBlock(block_id="reply_actions", elements=[
        ButtonElement(text=PlainTextObject(text=_mrkdwn_cut(action.label, BUTTON_MAX)), action_id=f"{ACTION_RUN}_{i}",
                      value=action_value(action)[:2000])
        for i, action in enumerate(actions[:5])])


def card_text(card: Card) -> str:
    """The plain-text fallback (notifications, screen readers); it mentions the --me subscribers."""
    who = mentions(card)
    return (f"{who} " if who else "") + _mrkdwn_cut(f"{card.title} — {card.authors} — {card.url}", FALLBACK_MAX - 300)


def digest_blocks(digest: Digest) -> list[Block]:
    """One message: a header, then compact lines of papers, ten to a section."""
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=_mrkdwn_cut(digest.title, HEADER_MAX), emoji=False))]
    # Sections are filled line by line and never cut: every paper listed is shown.
    sections: list[list[str]] = [[]]
    for card in digest.cards:
        votes = f" · ▲ {card.upvotes}" if card.upvotes is not None else ""
        line = f"• {_link(card.url, shorten(card.title, 120))}{votes}"
        if sections[-1] and len("\n".join(sections[-1] + [line])) > SECTION_MAX:
            sections.append([])
        sections[-1].append(line)
    room = MAX_BLOCKS - 2
    for chunk in sections[:room]:
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))))
    if len(sections) > room:
        rest = sum(len(chunk) for chunk in sections[room:])
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"and {rest} more: see `/papers search`")]))
    elif digest.note:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_mrkdwn_cut(digest.note, CONTEXT_MAX))]))
    return blocks


def digest_text(digest: Digest) -> str:
    return escape(f"{digest.title}: " + "; ".join(c.title for c in digest.cards))[:FALLBACK_MAX]


def reply_blocks(reply: Reply) -> list[Block]:
    """A command reply: its text (already ours, but quoting user input), then its cards."""
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=_mrkdwn_cut(reply.text, SECTION_MAX)))]
    if reply.actions:
        blocks.append(actions_block(reply.actions))
    for card in reply.cards:
        rendered = card_blocks(card)
        if len(blocks) + 1 + len(rendered) > MAX_BLOCKS:
            break
        blocks.append(DividerBlock())
        blocks.extend(rendered)
    return blocks


def home_view(sections: list[tuple[str, Reply]]) -> dict:
    """The App Home tab: a header and a reply's text for each section (views.publish's `view`)."""
    blocks: list[Block] = []
    for title, reply in sections:
        if blocks:
            blocks.append(DividerBlock())
        blocks.append(HeaderBlock(text=PlainTextObject(text=_mrkdwn_cut(title, HEADER_MAX), emoji=False)))
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_mrkdwn_cut(reply.text, SECTION_MAX))))
    return {"type": "home", "blocks": [block.to_dict() for block in blocks]}
