"""On-demand paper lookups for `/papers show`: each registered source in turn (Hugging Face
first, then the arXiv API); the sources own their HTTP (and arXiv its 3-second pacing)."""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

from . import sources
from .errors import SourceError
from .models import Paper

log = logging.getLogger(__name__)


class OnePaper(Protocol):
    name: str

    async def fetch_one(self, paper_id: str) -> Paper | None: ...


class PaperLookup:
    def __init__(self, sources: Sequence[OnePaper]):
        self.sources = tuple(sources)

    def labels(self) -> tuple[str, ...]:
        """The names for people of the sources asked, in order ("Hugging Face", "arXiv")."""
        return tuple(spec.label if (spec := sources.spec(s.name)) else s.name for s in self.sources)

    async def fetch(self, paper_id: str) -> Paper | None:
        """The paper with this arXiv id, or None if every source says it does not know it.

        Raises SourceError when a source could not be asked (network, server errors)."""
        return (await self.fetch_many([paper_id])).get(paper_id)

    async def fetch_many(self, paper_ids: Sequence[str]) -> dict[str, Paper]:
        """The papers of these arXiv ids that some source knows, by id: each source in turn
        is asked for those still missing, one request a paper, or one for many where the
        source can (arXiv's `fetch_many`: one paced request for up to 100, where one a paper
        would wait 3 s each). Raises SourceError, as `fetch`, when an id is still missing and
        a source could not be asked about it."""
        missing = list(dict.fromkeys(paper_ids))
        found: dict[str, Paper] = {}
        errors: list[str] = []
        for source in self.sources:
            if not missing:
                break
            many = getattr(source, "fetch_many", None)
            try:
                if many is not None:
                    found.update(await many(missing))
                else:
                    for paper_id in missing:
                        try:
                            paper = await source.fetch_one(paper_id)
                        except SourceError as exc:
                            errors.append(str(exc))
                            continue
                        if paper is not None:
                            found[paper_id] = paper
            except SourceError as exc:
                errors.append(str(exc))
            missing = [paper_id for paper_id in missing if paper_id not in found]
        if missing and errors:  # "unknown" only when every service that answered said so
            raise SourceError("lookup", "; ".join(dict.fromkeys(errors)))
        return found
