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

import bisect
import operator
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Mapping

from . import sources
from .models import ChannelRef, Match, Paper, Subscription
from .query import fold, name_tokens, parse_query, raw_words, stem
from .text import plural

# Prefix queries are indexed under their first 3 to 6 letters: longer anchors select fewer
# candidates, and a paper offers every such prefix of its words.
PREFIX_ANCHOR_MAX = 6

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
    def sorted_words(self) -> dict[str, list[str]]:
        """Per field, its distinct words in order: a prefix is found by bisection."""
        return {name: sorted(words) for name, words in self.raw_set.items()}

    @cached_property
    def all_raw(self) -> frozenset[str]:
        return self.raw_set["title"] | self.raw_set["abstract"]

    @cached_property
    def meta_keys(self) -> set[str]:
        """The index keys of authors, organization, categories and source."""
        keys = {"a:" + t for tokens in self.authors for t in tokens}
        keys.update("o:" + t for t in self.org)
        keys.update("c:" + c for c in self.cats)
        keys.update("c:" + c.split(".")[0] for c in self.cats)
        keys.add("s:" + self.paper.source)
        return keys


def _has_phrase(words: list[str], words_set: frozenset[str], phrase: tuple[str, ...]) -> bool:
    if not words_set.issuperset(phrase):  # cheap rejection before looking at positions
        return False
    first, size = phrase[0], len(phrase)
    start = 0
    try:
        while True:
            i = words.index(first, start)
            if tuple(words[i:i + size]) == phrase:
                return True
            start = i + 1
    except ValueError:
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
    if kind == "word":  # the hot path: most queries are words; test sets before building text
        scope, word = node[1], node[2]
        if scope != "abstract" and word in view.title_set:
            return [f"{node[3]} in title"]
        if scope != "title" and word in view.abstract_set:
            return [f"{node[3]} in abstract"]
        return None
    if kind == "phrase":
        for name, words, words_set in (("title", view.title, view.title_set),
                                       ("abstract", view.abstract, view.abstract_set)):
            if node[1] in ("any", name) and _has_phrase(words, words_set, node[2]):
                return [f'"{node[3]}" in {name}']
        return None
    if kind == "prefix":
        prefix = node[2]
        for name, words in view.sorted_words.items():
            if node[1] in ("any", name):
                i = bisect.bisect_left(words, prefix)
                if i < len(words) and words[i].startswith(prefix):
                    return [f"{words[i]} in {name}"]
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
        for author, tokens in zip(view.paper.authors, view.authors, strict=True):
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
        return [f"listed on {_label(node[1])}"] if view.paper.source == node[1] else None
    if kind == "upvotes":
        upvotes = view.paper.upvotes
        if upvotes is not None and _COMPARE[node[1]](upvotes, node[2]):
            return [plural(upvotes, "upvote")]
        return None
    raise ValueError(f"unknown query node {kind!r}")


def anchors(node: tuple, counts: Mapping[str, int] | None = None) -> frozenset[str] | None:
    """Index keys such that any paper matching `node` has at least one of them; None if none exist.

    `counts` (word stem -> in how many recent papers it appeared) picks the rarest word of
    a phrase or a conjunction; without it, the longest word stands in for the rarest.
    """
    kind = node[0]
    if kind == "word":
        return frozenset(["w:" + node[2]])
    if kind == "phrase":
        rarest = min(node[2], key=lambda w: (counts.get(w, 0), -len(w))) if counts else max(node[2], key=len)
        return frozenset(["w:" + rarest])
    if kind == "prefix":
        return frozenset(["p:" + node[2][:PREFIX_ANCHOR_MAX]])
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
            child_keys = anchors(child, counts)
            if child_keys is None:
                return None
            keys |= child_keys
        return frozenset(keys)
    # "and": one child's anchors are enough; prefer the most selective.
    options = [a for a in (anchors(c, counts) for c in node[1]) if a is not None]
    if not options:
        return None
    return min(options, key=lambda keys: _cost(keys, counts))


# Categories, organizations and sources are shared by a large share of all papers: a query
# anchored on one of them would be a candidate for most papers. Words, phrases, prefixes
# and authors are selective; among them, longer is usually rarer.
_COARSE = ("c:", "o:", "s:")


def _cost(keys: frozenset[str], counts: Mapping[str, int] | None) -> tuple[int, int, int, int]:
    coarse = sum(key.startswith(_COARSE) for key in keys)
    seen = sum(counts.get(key[2:], 0) for key in keys if key.startswith("w:")) if counts else 0
    return coarse, seen, len(keys), -min(map(len, keys))


@dataclass
class _Entry:
    """One distinct query text, shared by every subscription (in any channel) that uses it."""

    node: tuple
    keys: frozenset[str] | None
    subs: dict[int, ChannelRef] = field(default_factory=dict)
    # For the commonest shape, words anywhere (`diffusion`, `language agents`): the words'
    # (stem, text) pairs, decided by set lookups without walking the tree.
    words: tuple[tuple[str, str], ...] | None = None


def _plain_words(node: tuple) -> tuple[tuple[str, str], ...] | None:
    if node[0] == "word" and node[1] == "any":
        return ((node[2], node[3]),)
    if node[0] == "and" and all(c[0] == "word" and c[1] == "any" for c in node[1]):
        return tuple((c[2], c[3]) for c in node[1])
    return None


def _evaluate_entry(entry: _Entry, view: PaperView) -> list[str] | None:
    if entry.words is None:
        return evaluate(entry.node, view)
    title, abstract = view.title_set, view.abstract_set
    hits = []
    for word, text in entry.words:
        if word in title:
            hits.append(f"{text} in title")
        elif word in abstract:
            hits.append(f"{text} in abstract")
        else:
            return None
    return hits


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

    def __init__(self, subscriptions: Iterable[Subscription] = (), *, papers: Iterable[Paper] = ()):
        """`papers`: recent papers whose word counts help pick each query's rarest anchor."""
        self.counts: Counter[str] = Counter()
        for paper in papers:
            self.counts.update(PaperView(paper).any_set)
        self._entries: dict[str, _Entry] = {}  # query text -> entry
        self._by_sub: dict[int, str] = {}  # subscription id -> query text
        # anchor -> query texts, in three tables so that a paper's words are looked up
        # as they are, without building a key string for each:
        self._words: dict[str, set[str]] = {}  # "w:" anchors, by stem
        self._prefixes: dict[int, dict[str, set[str]]] = {}  # "p:" anchors, by length, by prefix
        self._index: dict[str, set[str]] = {}  # the other anchors (authors, categories, ...)
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
            entry = self._entries[query] = _Entry(node, anchors(node, self.counts), words=_plain_words(node))
            if entry.keys is None:
                self._always.add(query)
            else:
                for key in entry.keys:
                    table, name = self._table(key)
                    table.setdefault(name, set()).add(query)
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
            table, name = self._table(key)
            bucket = table[name]
            bucket.discard(query)
            if not bucket:
                del table[name]
                if key.startswith("p:") and not table:
                    del self._prefixes[len(name)]

    def _table(self, key: str) -> tuple[dict[str, set[str]], str]:
        if key.startswith("w:"):
            return self._words, key[2:]
        if key.startswith("p:"):
            return self._prefixes.setdefault(len(key) - 2, {}), key[2:]
        return self._index, key

    def is_empty(self) -> bool:
        return not (self._entries or self._words or self._prefixes or self._index or self._always)

    def candidates(self, view: PaperView) -> set[str]:
        found = set(self._always)
        words = self._words
        for word in view.any_set:
            bucket = words.get(word)
            if bucket:
                found |= bucket
        for size, table in self._prefixes.items():
            for word in view.all_raw:
                if len(word) >= size:
                    bucket = table.get(word[:size])
                    if bucket:
                        found |= bucket
        index = self._index
        for key in view.meta_keys:
            bucket = index.get(key)
            if bucket:
                found |= bucket
        return found

    def match(self, paper: Paper) -> list[Match]:
        view = PaperView(paper)
        found = []
        entries = self._entries
        for query in self.candidates(view):
            entry = entries[query]
            hits = _evaluate_entry(entry, view)
            if hits is not None:
                terms = tuple(hits)
                for sub_id, channel in entry.subs.items():
                    found.append(Match(sub_id, channel, query, terms))
        found.sort()  # by subscription id: ids are unique, so the tuple order is decided there
        return found


def _label(source: str) -> str:
    """The source's name for people, from the registry."""
    found = sources.spec(source)
    return found.label if found else source
