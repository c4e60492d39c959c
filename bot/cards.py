"""Platform-neutral paper cards; every length bound lives here, in one place."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .models import Card, Link, Match, Paper, SubscriptionRef
from .text import plural

TITLE_MAX = 250
AUTHORS_SHOWN = 3
AUTHORS_MAX = 200
BODY_MAX = 420
REASON_MAX = 300
SNIPPET_MAX = 200
CATEGORIES_SHOWN = 5
ORGANIZATION_MAX = 100
AI_SUMMARY = "AI summary"

# How bursts and digests are ordered (storage ranks them: storage/deliveries.py RANKING).
RANK_ORDER = "Most upvoted first, then the best match (terms in the title, terms matched), then the newest."


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
        terms = f": {', '.join(match.terms)}" if match.terms else ""
        parts.append(f"#{match.subscription_id} `{match.query}`{terms}")
    return shorten("; ".join(parts), REASON_MAX) if parts else None


_TERM = re.compile(r'^(?:"(?P<phrase>.+)"|(?P<word>.+)) in abstract$')


def _term_pattern(term: str) -> re.Pattern[str] | None:
    """How to find a matched abstract term ("diffusion in abstract", '"large model" in abstract')
    in text: its words in a row, each also with an ending ("model" finds "models", a plural typed
    finds the singular), case ignored; None for terms not about the abstract."""
    found = _TERM.match(term)
    if not found:
        return None
    words = re.findall(r"\w+", found.group("phrase") or found.group("word"))
    if not words:
        return None
    parts = [re.escape(w[:-1] if len(w) > 3 and w.lower().endswith("s") else w) + r"\w*" for w in words]
    return re.compile(r"(?<!\w)" + r"[\W_]+".join(parts), re.IGNORECASE)


def abstract_snippet(abstract: str, shown: str, matched: Sequence[Match], limit: int = SNIPPET_MAX) -> str | None:
    """The words of `abstract` around the matched abstract terms that the card's `shown` text
    does not hold (it shows the AI summary, or cut the abstract short), at most `limit`
    characters, '…' where it is cut; None when the card already shows every term."""
    missing = []
    for term in dict.fromkeys(t for m in matched for t in m.terms):
        pattern = _term_pattern(term)
        if pattern is not None and not pattern.search(shown):
            hit = pattern.search(abstract)
            if hit:
                missing.append(hit)
    if not missing:
        return None
    text = abstract
    first = min(missing, key=lambda hit: hit.start())
    start = max(0, first.start() - limit // 3)
    if start:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < first.start() else first.start()
    window = text[start:]
    snippet = shorten(window, limit - (1 if start else 0))
    return ("…" + snippet) if start else snippet


def organization_label(organization: str | None) -> str | None:
    return shorten(organization, ORGANIZATION_MAX) if organization else None


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
    body = shorten(paper.ai_summary or paper.summary or "(no abstract)", BODY_MAX)
    return Card(
        paper_id=paper.id,
        title=shorten(paper.title, TITLE_MAX),
        url=paper.abs_url,
        authors=short_authors(paper.authors),
        body=body,
        links=tuple(links),
        upvotes=paper.upvotes,
        reason=why_matched(matched),
        thumbnail=paper.thumbnail,
        source=paper.source,
        subscriptions=tuple(subscriptions),
        categories=paper.categories[:CATEGORIES_SHOWN],
        organization=organization_label(paper.organization),
        listed_on=paper.listed_on,
        comments=paper.comments,
        body_label=AI_SUMMARY if paper.ai_summary else "",
        snippet=abstract_snippet(paper.summary, f"{paper.title} {body}", matched) if matched else None,
        project_page=paper.project_page if paper.project_page != paper.github else None,
    )
