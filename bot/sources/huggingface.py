"""Hugging Face Daily Papers: `GET {base_url}/api/daily_papers` (a JSON array of items).

The listing is today's list; `?date=YYYY-MM-DD` gives a past day's (backfill), and
`GET {base_url}/api/papers/{id}` one paper (a flat object, `/papers show`).

Parsed from the raw JSON (not huggingface_hub, which loses the fields that live under
`paper`): upvotes, githubRepo, projectPage and ai_summary are on `paper`; the list date
is `paper.submittedOnDailyAt` (absent in older records, where the item's `publishedAt`
was the real submission time); the comment count is the item's `numComments`. Hugging
Face gives no arXiv categories: bot/enrich.py asks arXiv for them before matching.
Optional fields are optional (absent or null means unknown); unknown keys are ignored. A
field that is present but malformed (a wrong type, a count out of range such as upvotes of
2**70 or -3, a date `datetime` cannot parse or represent) makes its item skipped with one
logged reason: never the whole list.
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta

import httpx

from ..cards import link_url as _http_url  # the rule cards apply again to papers stored before it
from ..errors import SourceError
from ..models import Listing, Paper, Validators
from .base import (
    UNCONDITIONAL,
    BackfillPlan,
    SourceConfig,
    SourceSpec,
    bounded_repr,
    check_count,
    check_paper,
    clean_text,
    get_bytes,
    get_listing,
    parse_iso_datetime,
    url_problem,
)
from .ids import canonical_arxiv_id

log = logging.getLogger(__name__)

NAME = "huggingface"  # the one name: [sources.huggingface], source_state, Paper.source, queries


class HuggingFaceSource:
    name = NAME

    def __init__(self, client: httpx.AsyncClient, base_url: str, max_bytes: int = 20 * 1024 * 1024):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.max_bytes = max_bytes

    async def fetch(self, validators: Validators = UNCONDITIONAL) -> Listing:
        body, fresh = await get_listing(self.client, self.name, f"{self.base_url}/api/daily_papers", validators,
                                        params={"limit": 100}, max_bytes=self.max_bytes)
        if body is None:
            return Listing(None, fresh)
        skipped: list[str] = []
        return Listing(tuple(parse_daily_papers(body, skipped)), fresh, tuple(skipped))

    async def fetch_one(self, paper_id: str) -> Paper | None:
        try:
            body = await get_bytes(self.client, self.name, f"{self.base_url}/api/papers/{paper_id}",
                                   max_bytes=self.max_bytes)
        except SourceError as exc:
            if "HTTP 404" in exc.reason:  # Hugging Face never indexed this paper
                return None
            raise
        try:
            paper = parse_item(load_json(body))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SourceError(self.name, f"unreadable paper {paper_id}: {str(exc)[:300]}") from None
        if paper.id != paper_id:  # another paper than the one asked for is not an answer about this one
            log.warning("huggingface: asked for paper %s, got %s; left to the next source", paper_id, paper.id)
            return None
        return paper

    def backfill_plan(self, days: int, today: date) -> BackfillPlan:
        return BackfillPlan(tuple(today - timedelta(days=n) for n in range(days, 0, -1)),
                            f"Hugging Face today ({today}): its list is still growing; the poller stores it")

    async def fetch_day(self, day: date) -> list[Paper]:
        body = await get_bytes(self.client, self.name, f"{self.base_url}/api/daily_papers",
                               params={"date": day.isoformat(), "limit": 100}, max_bytes=self.max_bytes)
        return parse_daily_papers(body)


def _connect(client: httpx.AsyncClient, config: SourceConfig, max_bytes: int) -> HuggingFaceSource:
    return HuggingFaceSource(client, config["base_url"], max_bytes)


SPEC = SourceSpec(
    name=NAME,
    label="Hugging Face",
    interval_minutes=30.0,
    settings={"base_url": (str, "https://huggingface.co", url_problem)},
    connect=_connect,
    aliases=("hf",),  # `source:hf` as typed before the name was one (m013 renamed the stored subscriptions)
)


MAX_DIGITS = 30  # longer integer literals are kept as a marker that fails the range checks


class _HugeNumber(float):
    """An integer literal too long to be a real count (Python refuses over 4,300 digits)."""

    digits: int

    def __new__(cls, digits: int):
        number = super().__new__(cls, "inf")
        number.digits = digits
        return number

    def __repr__(self) -> str:
        return f"a number of {self.digits} digits"


def _bounded_int(text: str) -> int | float:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_DIGITS else _HugeNumber(digits)


def load_json(body: bytes) -> object:
    """json.loads, with absurdly long integers kept as a marker the range checks refuse."""
    return json.loads(body, parse_int=_bounded_int)


def parse_daily_papers(body: bytes, skipped: list[str] | None = None) -> list[Paper]:
    """The papers of a listing; each malformed item is logged (and its reason added to `skipped`)."""
    try:
        data = load_json(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SourceError(NAME, f"response is not valid JSON ({exc})", retryable=True) from None
    if not isinstance(data, list):
        raise SourceError(NAME, f"expected a JSON array of papers, got {type(data).__name__}")
    papers: list[Paper] = []
    for index, item in enumerate(data):
        try:
            papers.append(parse_item(item))
        except ValueError as exc:
            log.warning("huggingface: skipped item %d: %s", index, str(exc)[:300])
            if skipped is not None:
                skipped.append(str(exc)[:300])
    return papers


def parse_item(item: object) -> Paper:
    """One daily_papers item (or a flat /api/papers/{id} object) -> Paper; ValueError names what is wrong."""
    if not isinstance(item, dict):
        raise ValueError("item is not an object")
    inner = item.get("paper")
    paper: dict = inner if isinstance(inner, dict) else item
    raw_id = paper.get("id")
    paper_id = canonical_arxiv_id(raw_id) if isinstance(raw_id, str) else None
    if not paper_id:
        raise ValueError(f"no arXiv id (got {bounded_repr(raw_id)})")
    try:
        title = clean_text(_text(item, "title") or _text(paper, "title"), 1000)
        if not title:
            raise ValueError("has no title")
        raw_authors = paper.get("authors")
        if raw_authors is not None and not isinstance(raw_authors, list):
            raise ValueError(f"authors is not a list ({bounded_repr(raw_authors)})")
        authors = tuple(
            name
            for author in raw_authors or []
            if isinstance(author, dict) and not author.get("hidden")
            for name in [clean_text(_text(author, "name"), 200)]
            if name
        )
        listed = (parse_iso_datetime(paper.get("submittedOnDailyAt"), "paper.submittedOnDailyAt")
                  or parse_iso_datetime(item.get("publishedAt"), "publishedAt"))
        result = Paper(
            id=paper_id,
            title=title,
            summary=clean_text(_text(paper, "summary") or _text(item, "summary")),
            authors=authors,
            source=NAME,
            published=parse_iso_datetime(paper.get("publishedAt"), "paper.publishedAt"),
            listed_on=listed.date() if listed else None,
            upvotes=check_count(paper.get("upvotes"), "upvotes"),
            thumbnail=_http_url(_text(item, "thumbnail")),
            github=_http_url(_text(paper, "githubRepo")),
            project_page=_http_url(_text(paper, "projectPage")),
            ai_summary=clean_text(_text(paper, "ai_summary"), 2000) or None,
            organization=_organization(paper.get("organization") or item.get("organization")),
            comments=check_count(item.get("numComments", paper.get("numComments")), "numComments"),
        )
        check_paper(result)
    except ValueError as exc:
        raise ValueError(f"{paper_id}: {exc}") from None
    return result


def _text(obj: dict, key: str) -> str | None:
    """A string field: None when absent or null, ValueError when it is not a string."""
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{key} is not text ({bounded_repr(value)})")


def _organization(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    name = clean_text(value.get("name"), 100)
    full = clean_text(value.get("fullname"), 200)
    if full and name and full.casefold() != name.casefold():
        return f"{full} ({name})"
    return full or name or None
