"""Matching papers against subscriptions, behind one small interface.

First version: a subscription is one or more words; it matches a paper whose title or
abstract contains all of them as words, case-insensitively. Words are runs of letters
and digits, so "diffusion" matches "Diffusion-based". The query language of a later
version replaces `KeywordMatcher` and `normalize_query`, not their callers.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Protocol

from .errors import QueryError
from .models import Match, Paper, Subscription

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 20
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Case-folded words of `text`; hyphens, punctuation and underscores separate words."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def normalize_query(text: str) -> str:
    """The canonical form of a subscription query; raises QueryError with a clear reason."""
    text = text.strip()
    if not text:
        raise QueryError("the query is empty: give one or more words, e.g. `subscribe diffusion`")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    found = list(dict.fromkeys(words(text)))
    if not found:
        raise QueryError("the query has no words (letters or digits) to match")
    if len(found) > MAX_QUERY_WORDS:
        raise QueryError(f"the query has {len(found)} words; the limit is {MAX_QUERY_WORDS}")
    return " ".join(found)


class Matcher(Protocol):
    def add(self, subscription: Subscription) -> None: ...

    def remove(self, subscription_id: int) -> None: ...

    def match(self, paper: Paper) -> list[Match]:
        """Every subscription that `paper` satisfies, each with the terms that matched."""
        ...


class KeywordMatcher:
    """All-words matching, indexed by each subscription's rarest-looking (longest) word."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()):
        self._subs: dict[int, tuple[Subscription, tuple[str, ...]]] = {}
        self._by_word: dict[str, set[int]] = {}
        for subscription in subscriptions:
            self.add(subscription)

    def add(self, subscription: Subscription) -> None:
        terms = tuple(words(subscription.query))
        if not terms:
            return
        self.remove(subscription.id)
        self._subs[subscription.id] = (subscription, terms)
        self._by_word.setdefault(max(terms, key=len), set()).add(subscription.id)

    def remove(self, subscription_id: int) -> None:
        entry = self._subs.pop(subscription_id, None)
        if entry is not None:
            self._by_word[max(entry[1], key=len)].discard(subscription_id)

    def match(self, paper: Paper) -> list[Match]:
        tokens = set(words(paper.title)) | set(words(paper.summary))
        candidates = set().union(*(self._by_word.get(t, ()) for t in tokens)) if tokens else set()
        matches = []
        for sub_id in sorted(candidates):
            subscription, terms = self._subs[sub_id]
            if all(term in tokens for term in terms):
                matches.append(Match(sub_id, subscription.channel, subscription.query, terms))
        return matches
