"""arXiv: the one module that talks to arXiv, RSS and API alike, through one 3-second pacer.

The listing is the announcement RSS: `GET {base_url}/rss/cs.LG+cs.CL+...` (one request
per poll). One paper (`/papers show`) and past days (`papers-bot backfill`) come from the
API at `api_url`. arXiv asks for at most one request every 3 seconds: every request of
one ArxivSource waits its turn at its Pacer, and the bot builds one ArxivSource.

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
from datetime import date, datetime, timedelta, timezone
from typing import Sequence

import feedparser
import httpx

from ..errors import SourceError
from ..models import Listing, Paper, Validators
from .base import (
    UNCONDITIONAL,
    BackfillPlan,
    Pacer,
    SourceConfig,
    SourceSpec,
    bounded_repr,
    check_datetime,
    check_paper,
    clean_text,
    get_bytes,
    get_listing,
    url_problem,
)
from .ids import arxiv_version, canonical_arxiv_id

log = logging.getLogger(__name__)

NAME = "arxiv"  # the one name: [sources.arxiv], source_state, Paper.source, `source:arxiv`

ANNOUNCE_NEW = ("new", "cross")
ANNOUNCE_UPDATE = ("replace", "replace-cross")
_PREAMBLE = re.compile(r"^\s*arXiv:\S+\s+Announce Type:\s*\S+\s*(?:Abstract:\s*)?", re.IGNORECASE)


ARXIV_INTERVAL = 3.0  # seconds between requests (arXiv's terms of use)
ARXIV_PAGE = 200  # API results per request
ID_LIST_MAX = 100  # ids per `id_list` request (categories of other sources' papers)
ARXIV_LAG_DAYS = 3  # newer submissions may not be announced yet: the poller brings those
DEFAULT_API_URL = "https://export.arxiv.org/api/query"


class ArxivSource:
    name = NAME

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        categories: tuple[str, ...],
        max_bytes: int = 20 * 1024 * 1024,
        pacer: Pacer | None = None,
        *,
        api_url: str = DEFAULT_API_URL,
    ):
        self.client = client
        self.pacer = pacer or Pacer(ARXIV_INTERVAL)
        self.base_url = base_url.rstrip("/")
        self.api_url = api_url
        self.categories = categories
        self.max_bytes = max_bytes

    async def fetch(self, validators: Validators = UNCONDITIONAL) -> Listing:
        # One request for all categories: arXiv asks for at most one request every 3 s.
        url = f"{self.base_url}/rss/{'+'.join(self.categories)}"
        async with self.pacer:
            body, fresh = await get_listing(self.client, self.name, url, validators, max_bytes=self.max_bytes)
        if body is None:
            return Listing(None, fresh)
        skipped: list[str] = []
        return Listing(tuple(parse_rss(body, skipped)), fresh, tuple(skipped))

    async def fetch_one(self, paper_id: str) -> Paper | None:
        return parse_api_entry(await self._api({"id_list": paper_id}), paper_id)

    async def fetch_many(self, paper_ids: Sequence[str]) -> dict[str, Paper]:
        """The papers of these ids arXiv knows, by id: one API `id_list` request for up to
        ID_LIST_MAX of them (each a turn at the pacer), where `fetch_one` a paper would take
        3 s each. SourceError when a request fails."""
        ids = list(dict.fromkeys(paper_ids))
        if len(ids) == 1:  # `show`'s one: asked as ever
            paper = await self.fetch_one(ids[0])
            return {ids[0]: paper} if paper is not None else {}
        return await self._by_ids(ids)

    async def categories_of(self, paper_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """arXiv's categories of these papers, by id (`_by_ids`). Ids arXiv does not know (or
        lists without categories) are left out. SourceError when a request fails: the caller
        keeps what it has."""
        return {paper_id: p.categories for paper_id, p in (await self._by_ids(paper_ids)).items() if p.categories}

    async def _by_ids(self, paper_ids: Sequence[str]) -> dict[str, Paper]:
        """The papers of these ids arXiv knows, by id: API `id_list` requests of at most
        ID_LIST_MAX ids, each waiting its turn at this source's one pacer."""
        ids = list(dict.fromkeys(paper_ids))
        found: dict[str, Paper] = {}
        for start in range(0, len(ids), ID_LIST_MAX):
            chunk = ids[start:start + ID_LIST_MAX]
            papers, _total = parse_api_feed(await self._api({"id_list": ",".join(chunk), "max_results": len(chunk)}))
            wanted = set(chunk)
            found.update((p.id, p) for p in papers if p.id in wanted)
        return found

    def backfill_plan(self, days: int, today: date) -> BackfillPlan:
        first = today - timedelta(days=min(ARXIV_LAG_DAYS - 1, days))
        return BackfillPlan(
            tuple(today - timedelta(days=n) for n in range(days, ARXIV_LAG_DAYS - 1, -1)),
            f"arXiv {first} to {today}: submissions of the last {ARXIV_LAG_DAYS} days may not be announced "
            "yet, so their lists would be incomplete; the poller stores arXiv's announcements from its RSS feed",
            counted="submitted")

    async def fetch_day(self, day: date) -> list[Paper]:
        """Papers of the configured categories submitted on `day`, from API pages."""
        stamp = day.strftime("%Y%m%d")
        query = ("(" + " OR ".join(f"cat:{c}" for c in self.categories)
                 + f") AND submittedDate:[{stamp}0000 TO {stamp}2359]")
        papers: list[Paper] = []
        start = 0
        while True:
            page, total = parse_api_feed(await self._api({
                "search_query": query, "start": start, "max_results": ARXIV_PAGE,
                "sortBy": "submittedDate", "sortOrder": "ascending"}))
            papers += page
            start += ARXIV_PAGE
            if not page or start >= total:
                return papers

    async def _api(self, params: dict) -> bytes:
        async with self.pacer:
            return await get_bytes(self.client, self.name, self.api_url, params=params, max_bytes=self.max_bytes)


_CATEGORY = re.compile(r"^[a-z-]+(\.[A-Za-z-]+)?$")


def _categories(value: list) -> str | None:
    if not value:
        return "must list at least one arXiv category"
    bad = [c for c in value if not isinstance(c, str) or not _CATEGORY.match(c)]
    return f"not arXiv categories: {bad!r} (expected forms like 'cs.LG')" if bad else None


def _connect(client: httpx.AsyncClient, config: SourceConfig, max_bytes: int) -> ArxivSource:
    # Its pacer is shared with this machine's other processes on the same database by `connect`.
    return ArxivSource(client, config["base_url"], tuple(config["categories"]), max_bytes, api_url=config["api_url"])


SPEC = SourceSpec(
    name=NAME,
    label="arXiv",
    interval_minutes=60.0,
    settings={
        "categories": (list, ["cs.LG", "cs.CL", "cs.CV", "cs.AI", "stat.ML"], _categories),
        "base_url": (str, "https://rss.arxiv.org", url_problem),
        "api_url": (str, DEFAULT_API_URL, url_problem),
    },
    connect=_connect,
)


# feedparser's notes that do not mean the document was misread.
_BENIGN = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


def parse_feed(body: bytes, what: str = "response") -> feedparser.FeedParserDict:
    """Parse an RSS/Atom document that must be complete; SourceError otherwise."""
    # Abstracts are plain text, never rendered as HTML here: keep them as written.
    feed = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    error = feed.get("bozo_exception")
    if not feed.get("version"):
        reason = getattr(error, "getMessage", lambda: "")() or "no RSS or Atom root"
        raise SourceError(NAME, f"{what} is not an RSS/Atom feed ({reason[:200]})")
    if feed.get("bozo") and not isinstance(error, _BENIGN):
        detail = getattr(error, "getMessage", lambda: str(error))() or type(error).__name__
        line = getattr(error, "getLineNumber", lambda: None)()
        where = f" at line {line}" if line else ""
        raise SourceError(NAME, f"{what} is not a complete, well-formed feed ({detail[:200]}{where}); "
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
        source=NAME,
        published=published,
        listed_on=published.date(),
        is_update=announce in ANNOUNCE_UPDATE,
        version=version_of(paper_id, str(entry.get("id") or ""), str(entry.get("summary") or "")[:100]),
    )
    check_paper(paper)
    return paper


def version_of(paper_id: str, *texts: str) -> int | None:
    """The version these texts give for `paper_id` (the RSS guid `oai:arXiv.org:ID`vN or
    the description's `arXiv:ID`vN; the API's entry id): the first that names one."""
    for text in texts:
        if canonical_arxiv_id(text) == paper_id:
            version = arxiv_version(text)
            if version is not None:
                return version
    return None


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


# ---- the API (Atom): one paper, and past days -------------------------------------------

def parse_api_feed(body: bytes) -> tuple[list[Paper], int]:
    """The papers of an arXiv API (Atom) response, and the total the query has.

    A response that does not parse completely (cut off, not well-formed) is a SourceError:
    nothing from it is used. An entry without id, title, authors or date is skipped.
    """
    feed = parse_feed(body, "API response")
    papers = []
    for entry in feed.entries:
        entry_id = str(entry.get("id") or "")
        if "/api/errors" in entry_id:  # arXiv reports errors as a feed with one entry
            raise SourceError(NAME, f"API error: {clean_text(entry.get('summary'), 200)}", retryable=False)
        try:
            papers.append(_api_paper(entry, entry_id))
        except ValueError as exc:
            log.warning("arxiv API: skipped an entry: %s", str(exc)[:300])
    total = feed.feed.get("opensearch_totalresults")
    return papers, int(total) if str(total or "").isdigit() and len(str(total)) < 10 else len(papers)


def _api_paper(entry: dict, entry_id: str) -> Paper:
    paper_id = canonical_arxiv_id(entry_id)
    if not paper_id:
        raise ValueError(f"no arXiv id in {entry_id[:80]!r}")
    title = clean_text(entry.get("title"), 1000)
    if not title:
        raise ValueError(f"{paper_id} has no title")
    authors = tuple(a for a in (clean_text(x.get("name"), 200) for x in entry.get("authors") or []
                                if isinstance(x, dict)) if a)
    if not authors:
        raise ValueError(f"{paper_id} has no authors")
    when = entry_datetime(entry, paper_id)
    paper = Paper(
        id=paper_id,
        title=title,
        summary=clean_text(entry.get("summary")),
        authors=authors,
        categories=tuple(t["term"] for t in entry.get("tags") or [] if t.get("term")),
        source=NAME,
        published=when,
        listed_on=when.date(),
        version=version_of(paper_id, entry_id),
    )
    check_paper(paper)
    return paper


def parse_api_entry(body: bytes, paper_id: str) -> Paper | None:
    """The entry for `paper_id` in an arXiv API (Atom) response; None if there is none."""
    papers, _total = parse_api_feed(body)
    return next((p for p in papers if p.id == paper_id), None)
