"""Paper sources, and the registry every other module reads them from.

A source is one module here that defines its fetcher (listing, one paper, a past day)
and a `SPEC`, plus one line in SOURCES below; its settings are the [sources.NAME]
section of the config. Wiring, `/healthz`, `/metrics`, `status`, the backfill, `show`
lookups and `source:` in queries all iterate SOURCES: none of them names a source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import httpx

from . import arxiv, huggingface
from .arxiv import ArxivSource
from .base import BackfillPlan, PaperSource, Source, SourceConfig, SourceSpec, make_client
from .huggingface import HuggingFaceSource
from .ids import canonical_arxiv_id

# In lookup order: `/papers show` asks the first source first.
SOURCES: tuple[SourceSpec, ...] = (huggingface.SPEC, arxiv.SPEC)


def spec(name: str) -> SourceSpec | None:
    """The registered source called `name` (or one of its aliases), or None."""
    return next((s for s in SOURCES if name == s.name or name in s.aliases), None)


def connect(client: httpx.AsyncClient, configs: Mapping[str, SourceConfig], max_bytes: int,
            shared: str | None = None) -> dict[str, PaperSource]:
    """One fetcher per registered source (enabled or not: lookups ask them all), by name.
    `shared`: where the files that pace a source's requests across processes begin
    (`<shared>.<source>.pace`: bot.app.pacing_files), or None (each process paces its own)."""
    return {s.name: s.connect(client, configs[s.name], max_bytes,
                              None if shared is None else Path(f"{shared}.{s.name}.pace")) for s in SOURCES}


__all__ = ["SOURCES", "ArxivSource", "BackfillPlan", "HuggingFaceSource", "PaperSource", "Source", "SourceConfig",
           "SourceSpec", "canonical_arxiv_id", "connect", "make_client", "spec"]
