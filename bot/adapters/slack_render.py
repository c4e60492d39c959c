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
    ImageElement,
    InputBlock,
    MarkdownTextObject,
    Option,
    OverflowMenuElement,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from ..cards import shorten
from ..models import Action, Card, Digest, Reply, SubscribeForm, SubscriptionRef, ThreadReply
from ..text import plural

HEADER_MAX = 150  # header block plain_text
SECTION_MAX = 3000  # section text
CONTEXT_MAX = 2000
BUTTON_MAX = 75
ALT_TEXT_MAX = 2000
IMAGE_URL_MAX = 3000
MAX_BLOCKS = 50
FALLBACK_MAX = 3000
PAPER_EVENT = "papers_bot_paper"  # message metadata event type: the bot knows its own posts
FOLLOWUP_EVENT = "papers_bot_followup"  # the same, for a reply in a card's thread (payload: its key)

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
        # An escaped character is at most 5 long (&amp;): dropping a fifth of the excess may not be
        # enough (then again), but never leaves a text of many entities shorter than it must be.
        cut = shorten(cut, max(1, len(cut) - max(10, -(-(len(escape(cut)) - limit) // 5))))
    return escape(cut)


def _link(url: str, label: str) -> str:
    # Our own URLs (arxiv.org, huggingface.co, https links from sources); `|` and `>` would
    # end the link early, so they are percent-encoded.
    safe = url.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    return f"<{safe}|{escape(label)}>"


def thread_reply_text(reply: ThreadReply) -> str:
    """A reply in a card's thread (mrkdwn): its text escaped and bounded, then its link."""
    text = _mrkdwn_cut(reply.text, 500)
    return f"{text}: {_link(reply.link.url, reply.link.label[:100])}" if reply.link else text


def card_facts(card: Card) -> str:
    """The context line under the abstract: authors, id, counts, organization, categories, date,
    project page. Outside text escaped; at most CONTEXT_MAX characters."""
    facts = [f"*{_mrkdwn_cut(card.authors, 600)}*", f"arXiv:{card.paper_id}"]
    if card.upvotes is not None:
        facts.append(f"▲ {plural(card.upvotes, 'upvote')}")
    if card.comments is not None:
        facts.append(f"💬 {plural(card.comments, 'comment')}")
    if card.organization:
        facts.append(_mrkdwn_cut(card.organization, 200))
    if card.categories:
        facts.append(_mrkdwn_cut(", ".join(card.categories), 200))
    if card.listed_on:
        facts.append(f"listed {card.listed_on.isoformat()}")
    if card.project_page and len(card.project_page) < 1000:
        facts.append(_link(card.project_page, "Project page"))
    text = " · ".join(facts)
    while len(text) > CONTEXT_MAX:  # never cut inside an entity or a link: drop whole facts
        facts.pop()
        text = " · ".join(facts)
    return text


def card_blocks(card: Card, subscriptions: tuple[SubscriptionRef, ...] = ()) -> list[Block]:
    """Header, abstract (or the labelled AI summary) with the thumbnail, facts, why it
    matched, buttons (and an overflow to unsubscribe the matching queries)."""
    label = f"*{card.body_label}:* " if card.body_label else ""
    body = label + _mrkdwn_cut(card.body, SECTION_MAX - len(label))
    image = None
    if card.thumbnail and card.thumbnail.startswith("https://") and len(card.thumbnail) <= IMAGE_URL_MAX:
        image = ImageElement(image_url=card.thumbnail, alt_text=shorten(f"Thumbnail: {card.title}", ALT_TEXT_MAX))
    blocks: list[Block] = [
        # Slack decodes the three entities in plain text too: escaping keeps `<!channel>` inert.
        HeaderBlock(text=PlainTextObject(text=_mrkdwn_cut(card.title, HEADER_MAX), emoji=False)),
        SectionBlock(text=MarkdownTextObject(text=body), accessory=image),
    ]
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=card_facts(card))]))
    if card.reason:
        why = [MarkdownTextObject(text=_mrkdwn_cut(f"Matched {card.reason}", CONTEXT_MAX))]
        if card.snippet:
            why.append(MarkdownTextObject(text="From the abstract: “" + _mrkdwn_cut(card.snippet, 600) + "”"))
        blocks.append(ContextBlock(elements=why))
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
    """One message: a header, how it is ordered, then compact lines of papers, ten to a section."""
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=_mrkdwn_cut(digest.title, HEADER_MAX), emoji=False))]
    if digest.order:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_mrkdwn_cut(digest.order, CONTEXT_MAX))]))
    # Sections are filled line by line and never cut: every paper listed is shown.
    sections: list[list[str]] = [[]]
    for card in digest.cards:
        votes = f" · ▲ {card.upvotes}" if card.upvotes is not None else ""
        line = f"• {_link(card.url, shorten(card.title, 120))}{votes}"
        if sections[-1] and len("\n".join(sections[-1] + [line])) > SECTION_MAX:
            sections.append([])
        sections[-1].append(line)
    room = MAX_BLOCKS - len(blocks) - 1
    for chunk in sections[:room]:
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))))
    if len(sections) > room:
        rest = sum(len(chunk) for chunk in sections[room:])
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"and {rest} more: see `/papers search`")]))
    elif digest.note:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_mrkdwn_cut(digest.note, CONTEXT_MAX))]))
    return blocks


def digest_text(digest: Digest, limit: int = FALLBACK_MAX) -> str:
    """The plain-text fallback: the title and the papers' titles, escaped, within `limit`
    characters, cut between entities (never `&am`: Slack would show a stray `&am`)."""
    return _mrkdwn_cut(f"{digest.title}: " + "; ".join(c.title for c in digest.cards), limit)


def notice_text(text: str) -> str:
    """A plain message (the admin channel's notices): escaped, within FALLBACK_MAX, cut between entities."""
    return _mrkdwn_cut(text, FALLBACK_MAX)


def reply_text(reply: Reply) -> str:
    """A command reply's text as a message's `text`: the fallback of its blocks (notifications,
    screen readers), or all there is. It quotes titles and typed text, so it is escaped like
    the blocks: a reply in a channel's thread (`@papers save ...`) pings nobody."""
    return notice_text(reply.text)


TEXT_SECTIONS_MAX = 10  # a reply's text over at most this many sections (30,000 characters)


def text_sections(text: str) -> list[SectionBlock]:
    """A reply's text as sections of whole lines, each within a section's 3,000 characters:
    a long reply (`list` of 50 subscriptions) keeps its lines, where one cut section would run
    them together into one paragraph and end mid-list. A single line too long is cut."""
    chunks: list[str] = []
    for line in text.split("\n"):
        line = _mrkdwn_cut(line, SECTION_MAX) if line.strip() else ""
        if chunks and len(chunks[-1]) + 1 + len(line) <= SECTION_MAX:
            chunks[-1] += "\n" + line
        else:
            chunks.append(line)
    chunks = [chunk for chunk in chunks if chunk.strip()]  # no text, no section (Slack refuses an empty one)
    if len(chunks) > TEXT_SECTIONS_MAX:
        rest = sum(chunk.count("\n") + 1 for chunk in chunks[TEXT_SECTIONS_MAX - 1:])
        chunks = chunks[:TEXT_SECTIONS_MAX - 1] + [f"… and {plural(rest, 'more line')}"]
    return [SectionBlock(text=MarkdownTextObject(text=chunk)) for chunk in chunks]


def reply_blocks(reply: Reply) -> list[Block]:
    """A command reply: its text (already ours, but quoting user input), then its cards."""
    blocks: list[Block] = list(text_sections(reply.text))
    if reply.form is not None and reply.ok:  # a preview: "Subscribe…" opens the form with its query
        blocks.append(open_form_button(reply.form))
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
        blocks.extend(text_sections(reply.text))
    return {"type": "home", "blocks": [block.to_dict() for block in blocks]}


# ---- the subscribe modal (views.open / views.update) ----------------------------------------

MODAL_SUBSCRIBE = "papers_subscribe"  # the view's callback_id: its view_submission comes back with it
BLOCK_QUERY = "papers_subscribe_query"  # the input block (errors are shown under it)
ACTION_QUERY = "papers_subscribe_query_input"  # its element: block_actions as the query is edited
BLOCK_PREVIEW = "papers_subscribe_preview"
ACTION_OPEN_FORM = "papers_subscribe_open"  # a "Subscribe…" button that opens the modal
MODAL_TITLE_MAX = 24  # title, submit and close texts
PLACEHOLDER_MAX = 150
HINT_MAX = 2000
METADATA_MAX = 3000
ERROR_MAX = 300  # an error shown under the input (response_action: errors)


def _plain(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=_mrkdwn_cut(text, limit) or "…", emoji=False)


def _code(text: str, limit: int) -> str:
    """Outside text as inline code: escaped, bounded, and unable to end the code span."""
    return f"`{_mrkdwn_cut(' '.join(text.replace('`', chr(0x2019)).split()), limit)}`"


def preview_blocks(form: SubscribeForm) -> list[Block]:
    """What the query typed so far would have matched: the parse error, or the query as
    understood, the estimate and the newest matching papers."""
    preview = form.preview
    if preview is None or not preview.query.strip():
        waiting = MarkdownTextObject(text=_mrkdwn_cut(form.waiting, CONTEXT_MAX))
        return [ContextBlock(block_id=BLOCK_PREVIEW, elements=[waiting])]
    if preview.error is not None:
        text = f":warning: {_code(preview.query, 600)}: {_mrkdwn_cut(preview.error, 1000)}"
        return [SectionBlock(block_id=BLOCK_PREVIEW, text=MarkdownTextObject(text=text))]
    lines = [f"*Understood as* {_code(preview.normalized, 1000)}", _mrkdwn_cut(preview.estimate, 600)]
    for card in preview.examples[:5]:
        votes = f" · ▲ {card.upvotes}" if card.upvotes is not None else ""
        line = f"• {_link(card.url, shorten(card.title, 150))}{votes}"
        if len("\n".join(lines + [line])) > SECTION_MAX:  # whole lines only: no entity or link is cut
            break
        lines.append(line)
    return [SectionBlock(block_id=BLOCK_PREVIEW, text=MarkdownTextObject(text="\n".join(lines)))]


def subscribe_modal(form: SubscribeForm, private_metadata: str, *, opening: bool = True) -> View:
    """The modal: the query input (a block_actions payload on each edit and on Enter) and
    its preview. `opening` False (views.update): the input carries no initial value, so what
    the user is typing stays as it is (same block_id and action_id)."""
    element = PlainTextInputElement(
        action_id=ACTION_QUERY, placeholder=_plain(form.placeholder, PLACEHOLDER_MAX), max_length=form.max_length,
        initial_value=(form.query[:form.max_length] or None) if opening else None, focus_on_load=opening,
        dispatch_action_config={"trigger_actions_on": ["on_enter_pressed", "on_character_entered"]})
    blocks: list[Block] = [
        InputBlock(block_id=BLOCK_QUERY, label=_plain(form.label, 200), element=element, dispatch_action=True,
                   hint=_plain(form.hint, HINT_MAX)),
        *preview_blocks(form),
    ]
    return View(type="modal", callback_id=MODAL_SUBSCRIBE, title=_plain(form.title, MODAL_TITLE_MAX),
                submit=_plain(form.submit, MODAL_TITLE_MAX), close=_plain("Cancel", MODAL_TITLE_MAX),
                private_metadata=private_metadata[:METADATA_MAX], blocks=blocks)


def result_modal(title: str, text: str) -> View:
    """The modal after submitting: the same reply `/papers subscribe <query>` gives."""
    return View(type="modal", callback_id=MODAL_SUBSCRIBE, title=_plain(title, MODAL_TITLE_MAX),
                close=_plain("Done", MODAL_TITLE_MAX),
                blocks=[SectionBlock(text=MarkdownTextObject(text=_mrkdwn_cut(text, SECTION_MAX)))])


def form_error(text: str) -> str:
    """A reply's reason as an error under the input: its first line (no usage), bounded."""
    return shorten(text.split("\n", 1)[0], ERROR_MAX)


def open_form_button(form: SubscribeForm) -> ActionsBlock:
    """"Subscribe…" under a preview: opens the modal with the query filled in (the value)."""
    return ActionsBlock(block_id=ACTION_OPEN_FORM, elements=[
        ButtonElement(text=PlainTextObject(text=_mrkdwn_cut(form.submit, 70) + "…"), action_id=ACTION_OPEN_FORM,
                      value=form.query[:form.max_length])])
