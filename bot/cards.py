"""Platform-neutral paper cards; every length bound lives here, in one place."""

from __future__ import annotations

from collections.abc import Sequence

from .models import Card, Link, Match, Paper, SubscriptionRef
from .text import plural

TITLE_MAX = 250
AUTHORS_SHOWN = 3
AUTHORS_MAX = 200
BODY_MAX = 420
REASON_MAX = 300
SIMILAR = "similar:"  # a like: match's fact in Match.terms: "similar:<score>:<example id>:<example title>"


def shorten(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters, at a word boundary, marking the cut with '…'."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if text[limit - 1] != " " and " " in cut[limit // 2 :]:  # do not split a word
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.-") + "…"


def short_authors(authors: tuple[str, ...]) -> str:
    if not authors:
        return "unknown authors"
    shown = ", ".join(authors[:AUTHORS_SHOWN])
    rest = len(authors) - AUTHORS_SHOWN
    if rest > 0:
        shown += f" and {plural(rest, 'other')}"
    return shorten(shown, AUTHORS_MAX)


def why_matched(matched: Sequence[Match]) -> str | None:
    """'#1 `diffusion`: diffusion in title; #2 `video`': which subscriptions matched, and on what.

    Queries are shown as code; each renderer escapes the text for its platform."""
    parts = []
    for match in matched:
        terms = f": {', '.join(map(_term, match.terms))}" if match.terms else ""
        parts.append(f"#{match.subscription_id} `{match.query}`{terms}")
    return shorten("; ".join(parts), REASON_MAX) if parts else None


def read_similar_fact(term: str) -> tuple[float, str, str] | None:
    """(score, example id, example title) of a like: match's fact (bot.recommend.similar_fact),
    None for any other term."""
    if not term.startswith(SIMILAR):
        return None
    score, _, rest = term[len(SIMILAR):].partition(":")
    example_id, _, title = rest.partition(":")
    try:
        return float(score), example_id, title
    except ValueError:
        return None


def _term(term: str) -> str:
    """A matched term as people read it: a like: match says which example it is like."""
    similar = read_similar_fact(term)
    if similar is None:
        return term
    score, example_id, title = similar
    return f"similar to {title or example_id} ({score:.2f})"


def card_for(paper: Paper, matched: Sequence[Match] = (), subscriptions: Sequence[SubscriptionRef] = ()) -> Card:
    """The card for `paper`; `matched` says why a channel gets it (nothing for lookups), and
    `subscriptions` are those it answers that still exist (to unsubscribe or mute)."""
    links = [Link("arXiv", paper.abs_url), Link("PDF", paper.pdf_url)]
    if paper.upvotes is not None or paper.thumbnail or paper.ai_summary:
        links.append(Link("Hugging Face", paper.hf_url))
    if paper.github:
        links.append(Link("Code", paper.github))
    if paper.project_page and paper.project_page != paper.github:
        links.append(Link("Project page", paper.project_page))
    body = paper.ai_summary or paper.summary or "(no abstract)"
    return Card(
        paper_id=paper.id,
        title=shorten(paper.title, TITLE_MAX),
        url=paper.abs_url,
        authors=short_authors(paper.authors),
        body=shorten(body, BODY_MAX),
        links=tuple(links),
        upvotes=paper.upvotes,
        reason=why_matched(matched),
        thumbnail=paper.thumbnail,
        source=paper.source,
        subscriptions=tuple(subscriptions),
        categories=paper.categories[:5],
    )
