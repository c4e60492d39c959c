"""arXiv announcement RSS: `GET {base_url}/rss/cs.LG+cs.CL+...` (one request per poll).

Items are announced as `new`, `cross` (cross-listed), `replace` or `replace-cross`
(a new version of an older paper). Replacements come back marked `is_update`, so the
poller can store them without posting them as news. An empty channel is a normal
weekend or holiday, not an error. Parsed with feedparser, which copes with arXiv's
namespaces (`arxiv:announce_type`, `dc:creator`) and with the quirks of real feeds.

A feed that does not parse completely (cut off mid-document, not well-formed XML) gives
nothing at all: feedparser would still return the items before the break, the last one
half-read, and those must not be stored or posted. An item missing a required field
(arXiv id, title, authors, date) is skipped and logged; the others are kept.
"""

from __future__ import annotations

import calendar
import logging
import re
from datetime import datetime, timezone

import feedparser
import httpx

from ..errors import SourceError
from ..models import Paper
from .base import ARXIV_INTERVAL, NotModified, Pacer, bounded_repr, check_datetime, check_paper, clean_text, get_bytes
from .ids import canonical_arxiv_id

log = logging.getLogger(__name__)

ANNOUNCE_NEW = ("new", "cross")
ANNOUNCE_UPDATE = ("replace", "replace-cross")
_PREAMBLE = re.compile(r"^\s*arXiv:\S+\s+Announce Type:\s*\S+\s*(?:Abstract:\s*)?", re.IGNORECASE)


class ArxivSource:
    name = "arxiv"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        categories: tuple[str, ...],
        max_bytes: int = 20 * 1024 * 1024,
        pacer: Pacer | None = None,
    ):
        self.client = client
        self.pacer = pacer or Pacer(ARXIV_INTERVAL)
        self.base_url = base_url.rstrip("/")
        self.categories = categories
        self.max_bytes = max_bytes
        self.validators: dict[str, str] = {}
        self.skipped: list[str] = []  # why items of the last feed were skipped

    async def fetch(self) -> list[Paper] | None:
        self.skipped = []
        # One request for all categories: arXiv asks for at most one request every 3 s.
        url = f"{self.base_url}/rss/{'+'.join(self.categories)}"
        try:
            async with self.pacer:
                body = await get_bytes(self.client, self.name, url, max_bytes=self.max_bytes,
                                       validators=self.validators)
        except NotModified:
            return None
        return parse_rss(body, self.skipped)


# feedparser's notes that do not mean the document was misread.
_BENIGN = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


def parse_feed(body: bytes, what: str = "response") -> feedparser.FeedParserDict:
    """Parse an RSS/Atom document that must be complete; SourceError otherwise."""
    # Abstracts are plain text, never rendered as HTML here: keep them as written.
    feed = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    error = feed.get("bozo_exception")
    if not feed.get("version"):
        reason = getattr(error, "getMessage", lambda: "")() or "no RSS or Atom root"
        raise SourceError("arxiv", f"{what} is not an RSS/Atom feed ({reason[:200]})")
    if feed.get("bozo") and not isinstance(error, _BENIGN):
        detail = getattr(error, "getMessage", lambda: str(error))() or type(error).__name__
        line = getattr(error, "getLineNumber", lambda: None)()
        where = f" at line {line}" if line else ""
        raise SourceError("arxiv", f"{what} is not a complete, well-formed feed ({detail[:200]}{where}); "
                                   "nothing from it was stored")
    return feed


def parse_rss(body: bytes, skipped: list[str] | None = None) -> list[Paper]:
    """The papers of a complete feed; each malformed item is logged (and its reason added to `skipped`)."""
    feed = parse_feed(body)
    papers: dict[str, Paper] = {}
    for index, entry in enumerate(feed.entries):
        try:
            paper = parse_entry(entry)
        except ValueError as exc:
            log.warning("arxiv: skipped item %d: %s", index, str(exc)[:300])
            if skipped is not None:
                skipped.append(str(exc)[:300])
            continue
        # A paper cross-listed in several requested categories appears once per category.
        papers.setdefault(paper.id, paper)
    return list(papers.values())


def parse_entry(entry: dict) -> Paper:
    announce = str(entry.get("arxiv_announce_type") or "new").strip().lower()
    if announce not in ANNOUNCE_NEW + ANNOUNCE_UPDATE:
        raise ValueError(f"unknown announce type {announce[:30]!r}")
    paper_id = canonical_arxiv_id(str(entry.get("link") or "")) or canonical_arxiv_id(str(entry.get("id") or ""))
    if not paper_id:
        raise ValueError(f"no arXiv id in link {str(entry.get('link'))[:80]!r}")
    title = clean_text(entry.get("title"), 1000)
    if not title:
        raise ValueError(f"{paper_id} has no title")
    summary = clean_text(_PREAMBLE.sub("", str(entry.get("summary") or "")))
    authors = tuple(a for a in (clean_text(x, 200) for x in str(entry.get("author") or "").split(",")) if a)
    if not authors:
        raise ValueError(f"{paper_id} has no authors")
    categories = tuple(t["term"] for t in entry.get("tags") or [] if t.get("term"))
    published = entry_datetime(entry, paper_id)
    paper = Paper(
        id=paper_id,
        title=title,
        summary=summary,
        authors=authors,
        categories=categories,
        source="arxiv",
        published=published,
        listed_on=published.date(),
        is_update=announce in ANNOUNCE_UPDATE,
    )
    check_paper(paper)
    return paper


def entry_datetime(entry: dict, paper_id: str) -> datetime:
    """The entry's publication time (UTC); ValueError when it is missing or out of range."""
    parsed = entry.get("published_parsed")
    if not parsed:
        raw = entry.get("published")
        raise ValueError(f"{paper_id} has no date" if not raw
                         else f"{paper_id}: date {bounded_repr(raw)} cannot be read")
    try:
        moment = datetime.fromtimestamp(calendar.timegm(parsed), timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{paper_id}: date {bounded_repr(entry.get('published'))} is out of range") from None
    return check_datetime(moment, f"{paper_id}: date")
