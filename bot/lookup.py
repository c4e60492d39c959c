"""On-demand paper lookups for `/papers show`: Hugging Face first, then the arXiv API."""

from __future__ import annotations

import logging

import httpx

from .errors import SourceError
from .models import Paper
from .sources.arxiv import entry_datetime, parse_feed
from .sources.base import ARXIV_INTERVAL, Pacer, check_paper, clean_text, get_bytes
from .sources.huggingface import load_json, parse_item
from .sources.ids import canonical_arxiv_id

log = logging.getLogger(__name__)


class PaperLookup:
    def __init__(self, client: httpx.AsyncClient, hf_base_url: str, arxiv_api_url: str,
                 max_bytes: int = 5 * 1024 * 1024, arxiv_pacer: Pacer | None = None):
        self.client = client
        self.arxiv_pacer = arxiv_pacer or Pacer(ARXIV_INTERVAL)  # shared with the arXiv source
        self.hf_base_url = hf_base_url.rstrip("/")
        self.arxiv_api_url = arxiv_api_url
        self.max_bytes = max_bytes

    async def fetch(self, paper_id: str) -> Paper | None:
        """The paper with this arXiv id, or None if both services say they do not know it.

        Raises SourceError when a service could not be asked (network, server errors).
        """
        errors = []
        for fetch in (self._from_huggingface, self._from_arxiv):
            try:
                paper = await fetch(paper_id)
            except SourceError as exc:
                errors.append(str(exc))
                continue
            if paper is not None:
                return paper
        if errors:  # "unknown" only when every service that answered said so
            raise SourceError("lookup", "; ".join(errors))
        return None

    async def _from_huggingface(self, paper_id: str) -> Paper | None:
        url = f"{self.hf_base_url}/api/papers/{paper_id}"
        try:
            body = await get_bytes(self.client, "huggingface", url, max_bytes=self.max_bytes)
        except SourceError as exc:
            if "HTTP 404" in exc.reason:  # Hugging Face never indexed this paper
                return None
            raise
        try:
            return parse_item(load_json(body))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SourceError("huggingface", f"unreadable paper {paper_id}: {str(exc)[:300]}") from None

    async def _from_arxiv(self, paper_id: str) -> Paper | None:
        async with self.arxiv_pacer:
            body = await get_bytes(self.client, "arxiv", self.arxiv_api_url, params={"id_list": paper_id},
                                   max_bytes=self.max_bytes)
        return parse_api_entry(body, paper_id)


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
            raise SourceError("arxiv", f"API error: {clean_text(entry.get('summary'), 200)}", retryable=False)
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
        source="arxiv",
        published=when,
        listed_on=when.date(),
    )
    check_paper(paper)
    return paper


def parse_api_entry(body: bytes, paper_id: str) -> Paper | None:
    """The entry for `paper_id` in an arXiv API (Atom) response; None if there is none."""
    papers, _total = parse_api_feed(body)
    return next((p for p in papers if p.id == paper_id), None)
