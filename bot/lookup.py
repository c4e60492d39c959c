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
        errors = []
        for source in self.sources:
            try:
                paper = await source.fetch_one(paper_id)
            except SourceError as exc:
                errors.append(str(exc))
                continue
            if paper is not None:
                return paper
        if errors:  # "unknown" only when every service that answered said so
            raise SourceError("lookup", "; ".join(errors))
        return None
