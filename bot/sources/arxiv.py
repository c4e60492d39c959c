"""arXiv announcement RSS: `GET {base_url}/rss/cs.LG+cs.CL+...` (one request per poll).

Items are announced as `new`, `cross` (cross-listed), `replace` or `replace-cross`
(a new version of an older paper). Replacements come back marked `is_update`, so the
poller can store them without posting them as news. An empty channel is a normal
weekend or holiday, not an error. Parsed with feedparser, which copes with arXiv's
namespaces (`arxiv:announce_type`, `dc:creator`) and with the quirks of real feeds.
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
from .base import ARXIV_INTERVAL, NotModified, Pacer, clean_text, get_bytes
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

    async def fetch(self) -> list[Paper]:
        # One request for all categories: arXiv asks for at most one request every 3 s.
        url = f"{self.base_url}/rss/{'+'.join(self.categories)}"
        try:
            async with self.pacer:
                body = await get_bytes(self.client, self.name, url, max_bytes=self.max_bytes,
                                       validators=self.validators)
        except NotModified:
            return None
        return parse_rss(body)


def parse_rss(body: bytes) -> list[Paper]:
    # Abstracts are plain text, never rendered as HTML here: keep them as written.
    feed = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    if not feed.get("version"):
        reason = getattr(feed.get("bozo_exception"), "getMessage", lambda: "")() or "no RSS or Atom root"
        raise SourceError("arxiv", f"response is not an RSS/Atom feed ({reason})")
    papers: dict[str, Paper] = {}
    for index, entry in enumerate(feed.entries):
        try:
            paper = parse_entry(entry)
        except ValueError as exc:
            log.warning("arxiv: skipped item %d: %s", index, exc)
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
    categories = tuple(t["term"] for t in entry.get("tags") or [] if t.get("term"))
    published = None
    if entry.get("published_parsed"):
        published = datetime.fromtimestamp(calendar.timegm(entry["published_parsed"]), timezone.utc)
    return Paper(
        id=paper_id,
        title=title,
        summary=summary,
        authors=authors,
        categories=categories,
        source="arxiv",
        published=published,
        listed_on=published.date() if published else None,
        is_update=announce in ANNOUNCE_UPDATE,
    )
