"""The like part of a query (issue 13), without the recommender's numpy and scipy: what the
handlers and the poll need to tell a like: query from a keyword one. bot/recommend.py scores."""

from __future__ import annotations

from dataclasses import dataclass

from .cards import SIMILAR, shorten
from .errors import QueryError
from .models import Paper
from .query import parse_query


@dataclass(frozen=True)
class LikeQuery:
    """The like part of a parsed query: its examples, its `score>=` if any, and the keyword
    rest (None when there is none), which filters."""

    examples: tuple[str, ...]
    min_score: float | None
    keywords: tuple | None


def split_like(node: tuple) -> LikeQuery | None:
    """The like part of a parsed query, None for a keyword query. bot/query.py keeps
    `like:` and `score>=` at the top level of a query (the root, or its AND)."""
    children = node[1] if node[0] == "and" else (node,)
    likes = [c for c in children if c[0] == "like"]
    if not likes:
        return None
    scores = [c[2] for c in children if c[0] == "score"]
    rest = [c for c in children if c[0] not in ("like", "score")]
    keywords = None if not rest else rest[0] if len(rest) == 1 else ("and", tuple(rest))
    return LikeQuery(likes[0][1], scores[0] if scores else None, keywords)


def like_query(text: str) -> LikeQuery | None:
    """`split_like` of a stored query text; None for keyword queries (and unparsable text)."""
    if "like:" not in text:  # the cheap test first: most queries are keywords
        return None
    try:
        return split_like(parse_query(text))
    except QueryError:
        return None


def similar_fact(example: Paper, score: float) -> str:
    """Why a like: subscription matched, as a fact in `Match.terms`; bot/cards.py words it
    "similar to <example title> (0.42)"."""
    return f"{SIMILAR}{score:.2f}:{example.id}:{shorten(example.title, 100)}"
