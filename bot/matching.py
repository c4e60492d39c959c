"""Matching papers against subscription queries, behind one small interface.

`PaperView` tokenizes a paper once. `evaluate` decides one query against one view and
explains the match. `IndexedMatcher` avoids evaluating every subscription against every
paper: like Lucene Monitor and the Elasticsearch percolator, it indexes each query under
the terms a paper must contain for the query to match ("anchors"), takes as candidates
the queries anchored on the paper's own terms, and evaluates only those. Queries with no
anchor (say `upvotes>=50` alone) are always evaluated. `NaiveMatcher` evaluates
everything; it is the reference the engine is tested and benchmarked against.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Protocol

from .models import ChannelRef, Match, Paper, Subscription
from .query import MIN_PREFIX, fold, name_tokens, parse_query, raw_words, stem

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "=": operator.eq}


class PaperView:
    """A paper tokenized once, in every form the queries need."""

    __slots__ = ("paper", "title_raw", "abstract_raw", "title", "abstract", "title_set", "abstract_set",
                 "any_set", "raw_set", "authors", "org", "cats", "__dict__")

    def __init__(self, paper: Paper):
        self.paper = paper
        self.title_raw = raw_words(paper.title)
        self.abstract_raw = raw_words(paper.summary)
        self.title = [stem(w) for w in self.title_raw]
        self.abstract = [stem(w) for w in self.abstract_raw]
        self.title_set = frozenset(self.title)
        self.abstract_set = frozenset(self.abstract)
        self.any_set = self.title_set | self.abstract_set
        self.raw_set = {"title": frozenset(self.title_raw), "abstract": frozenset(self.abstract_raw)}
        self.authors = [name_tokens(a) for a in paper.authors]
        self.org = tuple(raw_words(paper.organization or ""))
        self.cats = frozenset(fold(c) for c in paper.categories)

    @cached_property
    def keys(self) -> set[str]:
        """Every index key this paper can satisfy (see `anchors`)."""
        keys = {"w:" + s for s in self.any_set}
        keys.update("p:" + w[:MIN_PREFIX] for field in self.raw_set.values() for w in field if len(w) >= MIN_PREFIX)
        keys.update("a:" + t for tokens in self.authors for t in tokens)
        keys.update("o:" + t for t in self.org)
        keys.update("c:" + c for c in self.cats)
        keys.update("c:" + c.split(".")[0] for c in self.cats)
        keys.add("s:" + self.paper.source)
        return keys

    def sets(self, scope: str) -> Iterable[tuple[str, frozenset]]:
        if scope in ("any", "title"):
            yield "title", self.title_set
        if scope in ("any", "abstract"):
            yield "abstract", self.abstract_set


def _has_phrase(words: list[str], phrase: tuple[str, ...]) -> bool:
    first, size = phrase[0], len(phrase)
    for i, w in enumerate(words):
        if w == first and tuple(words[i:i + size]) == phrase:
            return True
    return False


def _author_matches(query: tuple[str, ...], author: tuple[str, ...]) -> bool:
    # Every name part of the query, in order, among the author's (initials ignored).
    if not author or query[-1] != author[-1]:
        return False
    it = iter(author)
    return all(part in it for part in query)


def evaluate(node: tuple, view: PaperView) -> list[str] | None:
    """None if `view` does not satisfy `node`; else what matched where (may be empty for NOT)."""
    kind = node[0]
    if kind == "word":
        for name, words in view.sets(node[1]):
            if node[2] in words:
                return [f"{node[3]} in {name}"]
        return None
    if kind == "phrase":
        for name, words in (("title", view.title), ("abstract", view.abstract)):
            if node[1] in ("any", name) and _has_phrase(words, node[2]):
                return [f'"{node[3]}" in {name}']
        return None
    if kind == "prefix":
        for name, words in view.raw_set.items():
            if node[1] in ("any", name):
                for w in words:
                    if w.startswith(node[2]):
                        return [f"{w} in {name}"]
        return None
    if kind == "and":
        hits: list[str] = []
        for child in node[1]:
            found = evaluate(child, view)
            if found is None:
                return None
            hits += found
        return hits
    if kind == "or":
        found_any = None
        for child in node[1]:
            found = evaluate(child, view)
            if found is not None:
                found_any = (found_any or []) + found
        return found_any
    if kind == "not":
        return [] if evaluate(node[1], view) is None else None
    if kind == "author":
        for author, tokens in zip(view.paper.authors, view.authors):
            if _author_matches(node[1], tokens):
                return [f"author {author}"]
        return None
    if kind == "org":
        size = len(node[1])
        if any(view.org[i:i + size] == node[1] for i in range(len(view.org) - size + 1)):
            return [f"org {view.paper.organization}"]
        return None
    if kind == "cat":
        value = node[1]
        if value in view.cats or ("." not in value and any(c.split(".")[0] == value for c in view.cats)):
            return [f"category {value}"]
        return None
    if kind == "source":
        return [f"listed on {'Hugging Face' if node[1] == 'hf' else 'arXiv'}"] if view.paper.source == node[1] else None
    if kind == "upvotes":
        upvotes = view.paper.upvotes
        if upvotes is not None and _COMPARE[node[1]](upvotes, node[2]):
            return [f"{upvotes} upvotes"]
        return None
    raise ValueError(f"unknown query node {kind!r}")


def anchors(node: tuple) -> frozenset[str] | None:
    """Index keys such that any paper matching `node` has at least one of them; None if none exist."""
    kind = node[0]
    if kind == "word":
        return frozenset(["w:" + node[2]])
    if kind == "phrase":
        return frozenset(["w:" + max(node[2], key=len)])  # the longest word is usually the rarest
    if kind == "prefix":
        return frozenset(["p:" + node[2][:MIN_PREFIX]])
    if kind == "author":
        return frozenset(["a:" + node[1][-1]])
    if kind == "org":
        return frozenset(["o:" + max(node[1], key=len)])
    if kind == "cat":
        return frozenset(["c:" + node[1]])
    if kind == "source":
        return frozenset(["s:" + node[1]])
    if kind in ("upvotes", "not"):
        return None
    if kind == "or":
        keys: set[str] = set()
        for child in node[1]:
            child_keys = anchors(child)
            if child_keys is None:
                return None
            keys |= child_keys
        return frozenset(keys)
    # "and": one child's anchors are enough; prefer the fewest, most specific keys.
    options = [a for a in (anchors(c) for c in node[1]) if a is not None]
    if not options:
        return None
    return min(options, key=lambda keys: (len(keys), -max(map(len, keys))))


class Matcher(Protocol):
    def add(self, subscription: Subscription) -> None: ...

    def remove(self, subscription_id: int) -> None: ...

    def match(self, paper: Paper) -> list[Match]:
        """Every subscription that `paper` satisfies, each with what matched where."""
        ...


@dataclass
class _Entry:
    """One distinct query text, shared by every subscription (in any channel) that uses it."""

    node: tuple
    keys: frozenset[str] | None
    subs: dict[int, ChannelRef] = field(default_factory=dict)


class NaiveMatcher:
    """Evaluates every subscription against every paper: the reference implementation."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()):
        self._subs: dict[int, tuple[Subscription, tuple]] = {}
        for subscription in subscriptions:
            self.add(subscription)

    def add(self, subscription: Subscription) -> None:
        self._subs[subscription.id] = (subscription, parse_query(subscription.query))

    def remove(self, subscription_id: int) -> None:
        self._subs.pop(subscription_id, None)

    def match(self, paper: Paper) -> list[Match]:
        view = PaperView(paper)
        found = []
        for sub_id, (sub, node) in sorted(self._subs.items()):
            hits = evaluate(node, view)
            if hits is not None:
                found.append(Match(sub_id, sub.channel, sub.query, tuple(hits)))
        return found


class IndexedMatcher:
    """The engine: candidates from an inverted index of query anchors, then exact evaluation."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()):
        self._entries: dict[str, _Entry] = {}  # query text -> entry
        self._by_sub: dict[int, str] = {}  # subscription id -> query text
        self._index: dict[str, set[str]] = {}  # anchor key -> query texts
        self._always: set[str] = set()  # query texts with no anchor
        for subscription in subscriptions:
            self.add(subscription)

    def __len__(self) -> int:
        return len(self._by_sub)

    def ids(self) -> set[int]:
        return set(self._by_sub)

    def add(self, subscription: Subscription) -> None:
        self.remove(subscription.id)
        query = subscription.query
        entry = self._entries.get(query)
        if entry is None:
            node = parse_query(query)
            entry = self._entries[query] = _Entry(node, anchors(node))
            if entry.keys is None:
                self._always.add(query)
            else:
                for key in entry.keys:
                    self._index.setdefault(key, set()).add(query)
        entry.subs[subscription.id] = subscription.channel
        self._by_sub[subscription.id] = query

    def remove(self, subscription_id: int) -> None:
        query = self._by_sub.pop(subscription_id, None)
        if query is None:
            return
        entry = self._entries[query]
        del entry.subs[subscription_id]
        if entry.subs:
            return
        del self._entries[query]
        if entry.keys is None:
            self._always.discard(query)
            return
        for key in entry.keys:
            bucket = self._index[key]
            bucket.discard(query)
            if not bucket:
                del self._index[key]

    def candidates(self, view: PaperView) -> set[str]:
        found = set(self._always)
        index = self._index
        for key in view.keys:
            bucket = index.get(key)
            if bucket:
                found |= bucket
        return found

    def match(self, paper: Paper) -> list[Match]:
        view = PaperView(paper)
        found = []
        for query in self.candidates(view):
            entry = self._entries[query]
            hits = evaluate(entry.node, view)
            if hits is not None:
                terms = tuple(hits)
                found.extend(Match(sub_id, channel, query, terms) for sub_id, channel in entry.subs.items())
        found.sort(key=lambda m: m.subscription_id)
        return found
