"""Complete metadata before matching: arXiv's categories for listed papers that have none.

Hugging Face lists papers without arXiv categories, so `cat:cs.CL` could never match them.
Before a poll's papers are stored and matched, `CategoryFiller.complete` asks the arXiv API
(`id_list`, 100 ids a request, through the one ArxivSource and so its one 3-second pacer)
for the categories of the papers that have none, neither in the listing nor in storage.

When arXiv cannot be asked (an error, or no answer within `timeout`), the papers are
stored and matched as they are, and filled later: the next poll of the same listing (Hugging
Face lists a day's papers all day) asks again for those still stored without categories;
storage then fills them in (`add_papers`), and the poller matches the paper again, so that
`cat:` subscriptions get it (deliveries are unique per paper and channel: nobody gets a
paper twice). A paper that leaves the listing before arXiv answered keeps no categories.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Protocol, Sequence

from storage import StoreContract

from .errors import SourceError
from .models import Paper

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 60.0  # seconds a poll waits for arXiv (its turn at the pacer included)


class CategorySource(Protocol):
    async def categories_of(self, paper_ids: Sequence[str]) -> dict[str, tuple[str, ...]]: ...


class CategoryFiller:
    def __init__(self, source: CategorySource, store: StoreContract, timeout: float = LOOKUP_TIMEOUT):
        self.source = source
        self.store = store
        self.timeout = timeout

    async def complete(self, papers: list[Paper]) -> list[Paper]:
        """`papers`, those without categories given arXiv's where it has them. Never raises
        for arXiv's failures (logged: the papers are matched as they are, filled later)."""
        lacking = [p.id for p in papers if not p.categories]
        if not lacking:
            return papers
        # Already stored with categories (an arXiv listing, an earlier lookup): nothing to ask.
        # A read of at most a listing's ids by primary key: a millisecond on the loop.
        known = {s.id for s in self.store.paper_snapshot(lacking) if s.categories}
        wanted = [i for i in lacking if i not in known]
        if not wanted:
            return papers
        try:
            found = await asyncio.wait_for(self.source.categories_of(wanted), self.timeout)
        except (SourceError, TimeoutError) as exc:
            log.warning("categories of %d papers not fetched from arXiv (%s); they are matched without, "
                        "and asked for again at the next poll", len(wanted), exc or "no answer in time")
            return papers
        except Exception:  # a parser bug must not cost the poll
            log.exception("categories of %d papers: the arXiv lookup failed; matched without", len(wanted))
            return papers
        if len(found) < len(wanted):
            log.info("arXiv has no categories for %d of %d papers", len(wanted) - len(found), len(wanted))
        return [replace(p, categories=found[p.id]) if not p.categories and p.id in found else p for p in papers]
