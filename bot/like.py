"""The like part of a query (issue 13), without the recommender's numpy and scipy: what the
handlers and the poll need to tell a like: query from a keyword one. bot/recommend.py scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cards import SIMILAR, shorten
from .errors import QueryError
from .models import ChannelFeedback, Paper
from .query import SAVED, parse_query

if TYPE_CHECKING:
    from storage import StoreContract

# like:saved reads this many of the channel's newest saved papers (positives), and of its
# newest "Not relevant" ones (negatives).
SAVED_MAX = 100

NOTHING_SAVED = ("This channel has not saved any papers yet: press Save under a card, "
                 "or give arXiv ids: like:2406.12345")


@dataclass(frozen=True)
class LikeQuery:
    """The like part of a parsed query: its examples (arXiv ids), its `score>=` if any, the
    keyword rest (None when there is none), which filters, and `saved`: like:saved, the
    channel's saved papers are examples too and its "Not relevant" ones negatives."""

    examples: tuple[str, ...]
    min_score: float | None
    keywords: tuple | None
    saved: bool = False


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
    ids = likes[0][1]
    return LikeQuery(tuple(i for i in ids if i != SAVED), scores[0] if scores else None, keywords, SAVED in ids)


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


def feedback_papers(store: StoreContract, like: LikeQuery, feedback: ChannelFeedback | None,
                    examples: list[Paper]) -> tuple[list[Paper], list[Paper]]:
    """A like: query's positives and negatives: its `examples` (the papers of its ids), and
    for like:saved the channel's saved papers after them and its "Not relevant" ones as
    negatives (those stored; a paper both saved and marked not relevant is a positive)."""
    if not like.saved or feedback is None:
        return examples, []
    positives = list(examples)
    taken = {p.id for p in positives}
    for paper_id in feedback.saved[:SAVED_MAX]:
        if paper_id not in taken and (paper := store.get_paper(paper_id)) is not None:
            positives.append(paper)
            taken.add(paper_id)
    negatives = []
    for paper_id in feedback.not_relevant[:SAVED_MAX]:
        if paper_id not in taken and (paper := store.get_paper(paper_id)) is not None:
            negatives.append(paper)
            taken.add(paper_id)
    return positives, negatives
