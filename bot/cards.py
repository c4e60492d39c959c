"""Platform-neutral paper cards; every length bound lives here, in one place."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

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


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # RFC 3986's reserved characters, and % (already encoded)


def link_url(value: object) -> str | None:
    """An http(s) link as a card's button can carry it, else None: Discord refuses a whole
    message whose link button's URL is not well formed (a space in it, no host) with HTTP 400,
    which is not retried, so the card would never be posted. Characters a URL may not hold as
    they are (`<`, `>`, `"`, non-ASCII letters) are percent-encoded, as a browser sends them."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value.startswith(("https://", "http://")) or len(value) >= 2000:
        return None
    if any(c.isspace() or not c.isprintable() for c in value):
        return None
    try:
        host = urlsplit(value).hostname
    except ValueError:  # "http://[oops"
        return None
    return quote(value, safe=_URL_SAFE) if host else None


def card_for(paper: Paper, matched: Sequence[Match] = (), subscriptions: Sequence[SubscriptionRef] = ()) -> Card:
    """The card for `paper`; `matched` says why a channel gets it (nothing for lookups), and
    `subscriptions` are those it answers that still exist (to unsubscribe or mute)."""
    links = [Link("arXiv", paper.abs_url), Link("PDF", paper.pdf_url)]
    if paper.upvotes is not None or paper.thumbnail or paper.ai_summary:
        links.append(Link("Hugging Face", paper.hf_url))
    # Papers stored before the source applied link_url keep the links as Hugging Face sent them
    # (`github.com/x` without its scheme, a space, `<`): the same rule here, on every card.
    github, project_page, thumbnail = link_url(paper.github), link_url(paper.project_page), link_url(paper.thumbnail)
    if project_page == github:
        project_page = None
    if github:
        links.append(Link("Code", github))
    if project_page:
        links.append(Link("Project page", project_page))
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
        thumbnail=thumbnail,
        source=paper.source,
        subscriptions=tuple(subscriptions),
        categories=paper.categories[:CATEGORIES_SHOWN],
        organization=organization_label(paper.organization),
        listed_on=paper.listed_on,
        comments=paper.comments,
        body_label=AI_SUMMARY if paper.ai_summary else "",
        snippet=abstract_snippet(paper.summary, f"{paper.title} {body}", matched) if matched else None,
        project_page=project_page,
    )
