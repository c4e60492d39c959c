"""Paper sources: Hugging Face Daily Papers and arXiv announcement RSS."""

from .arxiv import ArxivSource
from .base import Source, make_client
from .huggingface import HuggingFaceSource
from .ids import canonical_arxiv_id

__all__ = ["ArxivSource", "HuggingFaceSource", "Source", "canonical_arxiv_id", "make_client"]
