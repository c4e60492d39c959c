"""Hugging Face Daily Papers: `GET {base_url}/api/daily_papers` (a JSON array of items).

Parsed from the raw JSON (not huggingface_hub, which loses the fields that live under
`paper`): upvotes, githubRepo, projectPage and ai_summary are on `paper`; the list date
is `paper.submittedOnDailyAt` (absent in older records, where the item's `publishedAt`
was the real submission time). Optional fields are optional; unknown keys are ignored;
one malformed item is skipped with a logged reason, not the whole list.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime

import httpx

from ..errors import SourceError
from ..models import Paper
from .base import NotModified, clean_text, get_bytes
from .ids import canonical_arxiv_id

log = logging.getLogger(__name__)


class HuggingFaceSource:
    name = "huggingface"

    def __init__(self, client: httpx.AsyncClient, base_url: str, max_bytes: int = 20 * 1024 * 1024):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.max_bytes = max_bytes
        self.validators: dict[str, str] = {}

    async def fetch(self) -> list[Paper]:
        url = f"{self.base_url}/api/daily_papers"
        try:
            body = await get_bytes(self.client, self.name, url, params={"limit": 100}, max_bytes=self.max_bytes,
                                   validators=self.validators)
        except NotModified:
            return None
        return parse_daily_papers(body)


def parse_daily_papers(body: bytes) -> list[Paper]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError("huggingface", f"response is not valid JSON ({exc})", retryable=True) from None
    if not isinstance(data, list):
        raise SourceError("huggingface", f"expected a JSON array of papers, got {type(data).__name__}")
    papers: list[Paper] = []
    for index, item in enumerate(data):
        try:
            papers.append(parse_item(item))
        except ValueError as exc:
            log.warning("huggingface: skipped item %d: %s", index, exc)
    return papers


def parse_item(item: object) -> Paper:
    """One daily_papers item (or a flat /api/papers/{id} object) -> Paper."""
    if not isinstance(item, dict):
        raise ValueError("item is not an object")
    paper = item.get("paper") if isinstance(item.get("paper"), dict) else item
    paper_id = canonical_arxiv_id(str(paper.get("id") or ""))
    if not paper_id:
        raise ValueError(f"no arXiv id (got {str(paper.get('id'))[:40]!r})")
    title = clean_text(item.get("title") or paper.get("title"), 1000)
    if not title:
        raise ValueError(f"{paper_id} has no title")
    authors = tuple(
        name
        for author in paper.get("authors") or []
        if isinstance(author, dict) and not author.get("hidden")
        for name in [clean_text(author.get("name"), 200)]
        if name
    )
    listed = _date(paper.get("submittedOnDailyAt")) or _date(item.get("publishedAt"))
    upvotes = paper.get("upvotes")
    return Paper(
        id=paper_id,
        title=title,
        summary=clean_text(paper.get("summary") or item.get("summary")),
        authors=authors,
        source="hf",
        published=_datetime(paper.get("publishedAt")),
        listed_on=listed,
        upvotes=upvotes if isinstance(upvotes, int) and not isinstance(upvotes, bool) and upvotes >= 0 else None,
        thumbnail=_http_url(item.get("thumbnail")),
        github=_http_url(paper.get("githubRepo")),
        project_page=_http_url(paper.get("projectPage")),
        ai_summary=clean_text(paper.get("ai_summary"), 2000) or None,
        organization=_organization(paper.get("organization") or item.get("organization")),
    )


def _organization(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    name = clean_text(value.get("name"), 100)
    full = clean_text(value.get("fullname"), 200)
    if full and name and full.casefold() != name.casefold():
        return f"{full} ({name})"
    return full or name or None


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _date(value: object) -> date | None:
    parsed = _datetime(value)
    return parsed.date() if parsed else None


def _http_url(value: object) -> str | None:
    if isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) < 2000:
        return value.strip()
    return None
