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
import gc
import hashlib
import inspect
import logging
import marshal
import multiprocessing
import operator
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, compress
from types import MappingProxyType
from typing import Collection, Iterable, Literal, Mapping, Sequence, cast

from . import query as _query_module
from . import sources
from .models import ChannelRef, Match, Paper, Subscription
from .query import MIN_PREFIX, STEMS, fold, name_tokens, parse_query, raw_words
from .text import plural

log = logging.getLogger(__name__)

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
        self.title = list(map(STEMS.__getitem__, self.title_raw))  # map: no bytecode per word
        self.abstract = list(map(STEMS.__getitem__, self.abstract_raw))
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
    def title_pairs(self) -> frozenset[str]:
        """Its title's pairs of consecutive stems, as `features` names them (which has the
        abstract's too)."""
        return frozenset(map(" ".join, zip(self.title, self.title[1:], strict=False)))

    @cached_property
    def all_sorted(self) -> list[str]:
        """Its distinct words, of either field, in order: whether any begins with a prefix is
        one bisection."""
        return sorted(self.all_raw)

    def begins(self, prefix: str) -> bool:
        """Whether one of its words (of either field) begins with `prefix`."""
        words = self.all_sorted
        i = bisect.bisect_left(words, prefix)
        return i < len(words) and words[i].startswith(prefix)

    @cached_property
    def meta_keys(self) -> set[str]:
        """The index keys of authors, organization, categories and source."""
        keys = set()
        for tokens in self.authors:
            if tokens:
                last = tokens[-1]
                keys.add("a:" + last)
                keys.update([f"a:{last} {t}" for t in tokens[:-1]])
        keys.update(["o:" + t for t in self.org])
        keys.update(["c:" + c for c in self.cats])
        keys.update(["c:" + c.split(".")[0] for c in self.cats])
        keys.add("s:" + self.paper.source)
        return keys

    @cached_property
    def features(self) -> set[str]:
        """Every index key the paper offers, but prefixes: its word stems, `t:` and the stem
        of each title word, each pair of consecutive stems of a field ("language model"),
        and the meta keys. A query's anchors and required keys are drawn from the same
        names (see `requirements`), so a set lookup tells what a query may match."""
        keys = set(self.any_set)
        keys.update(map("t:".__add__, self.title_set))  # map: made in C, no bytecode per key
        for words in (self.title, self.abstract):
            keys.update(map(" ".join, zip(words, words[1:], strict=False)))  # "a b", as _pairs names them
        keys |= self.meta_keys
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


def _prefix_hits(node: tuple, view: PaperView) -> list[str] | None:
    """A prefix node's hit: the first word of its field(s) that begins with the prefix, by
    bisection of the sorted words, the title's first."""
    scope, prefix = node[1], node[2]
    for name, words in view.sorted_words.items():
        if scope == "any" or scope == name:
            i = bisect.bisect_left(words, prefix)
            if i < len(words) and words[i].startswith(prefix):
                return [f"{words[i]} in {name}"]
    return None


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
        if not view.begins(node[2]):  # one bisection: most prefixes evaluated begin no word
            return None
        return _prefix_hits(node, view)
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

    Keys are `PaperView.features` names, or `p:` and a prefix's first letters. `counts`
    (key -> in how many recent papers it appeared) picks the rarest pair of a phrase and
    the rarest child of a conjunction; without it, the longest key stands in for the rarest.
    """
    kind = node[0]
    if kind == "word":
        return frozenset(["t:" + node[2] if node[1] == "title" else node[2]])
    if kind == "phrase":
        pairs = _phrase_options(node)
        seen = counts or {}
        return frozenset([min(pairs, key=lambda k: (seen.get(k, 0), -len(k)))])
    if kind == "prefix":
        return frozenset(["p:" + node[2][:PREFIX_ANCHOR_MAX]])
    if kind == "author":
        return frozenset([_author_key(node[1])])
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


_FIXED_KEY = frozenset(["word", "prefix", "author", "org", "cat", "source"])


def _anchor_options(node: tuple) -> tuple[tuple[str, ...], ...] | None | Literal[False]:
    """What `anchors` chooses among, made once (it is stored in the compiled form): each
    option's keys, in the order `anchors` meets them, so that the first of the cheapest by
    `_cost` is its answer whatever the counts. None where `anchors` gives None; False where
    it decides more than once (an OR of phrases, say), or for kinds it does not know: it is
    called then."""
    kind = node[0]
    if kind in _FIXED_KEY:
        keys = anchors(node)
        return None if keys is None else (tuple(keys),)
    if kind == "phrase":  # its pairs: the cheapest by _cost is the rarest, as `anchors` picks it
        return tuple((key,) for key in _phrase_options(node))
    if kind in ("upvotes", "not"):
        return None
    if kind == "or":
        union: dict[str, None] = {}
        for child in node[1]:
            options = _anchor_options(child)
            if options is None:
                return None
            if options is False or len(options) != 1:
                return False
            union.update(dict.fromkeys(options[0]))
        return (tuple(union),)
    if kind != "and":
        return False
    found: list[tuple[str, ...]] = []
    for child in node[1]:
        options = _anchor_options(child)
        if options is False:
            return False
        if options is not None:
            found += options
    return tuple(found) or None


def _phrase_options(node: tuple) -> list[str]:
    return _pairs(node[2]) + (["t:" + w for w in node[2]] if node[1] == "title" else [])


def _pairs(stems: tuple[str, ...]) -> list[str]:
    """A phrase's consecutive pairs of stems, as `PaperView.features` names them."""
    return [f"{a} {b}" for a, b in zip(stems, stems[1:], strict=False)]


def _author_key(tokens: tuple[str, ...]) -> str:
    # A paper's author matches only if the family names are equal and the query's first
    # name part comes before it (see _author_matches); PaperView.meta_keys offers both keys.
    return f"a:{tokens[-1]} {tokens[0]}" if len(tokens) > 1 else "a:" + tokens[-1]


def requirements(node: tuple) -> list[frozenset[str]]:
    """What any paper matching `node` must offer among its `PaperView.features`: every one
    of these sets has at least one of them. A cheap, exact-where-it-can necessary test: a
    query that passes it is then evaluated."""
    kind = node[0]
    if kind == "word":
        return [frozenset(["t:" + node[2] if node[1] == "title" else node[2]])]
    if kind == "phrase":
        found = [frozenset([pair]) for pair in _pairs(node[2])]
        if node[1] == "title":
            found += [frozenset(["t:" + w]) for w in node[2]]
        return found
    if kind == "author":
        return [frozenset([_author_key(node[1])])]
    if kind == "org":
        return [frozenset(["o:" + t]) for t in node[1]]
    if kind == "cat":
        return [frozenset(["c:" + node[1]])]
    if kind == "source":
        return [frozenset(["s:" + node[1]])]
    if kind == "and":
        return [clause for child in node[1] for clause in requirements(child)]
    if kind == "or":
        union: set[str] = set()
        for child in node[1]:
            clauses = requirements(child)
            if not clauses:
                return []
            union |= min(clauses, key=len)  # the matching child offers that one's keys
        return [frozenset(union)]
    return []  # prefix, upvotes, not: nothing required among the features


# Categories, organizations and sources are shared by a large share of all papers: a query
# anchored on one of them would be a candidate for most papers. Words, phrases, prefixes
# and authors are selective; among them, longer is usually rarer.
_COARSE = ("c:", "o:", "s:")


def _cost(keys: Collection[str], counts: Mapping[str, int] | None) -> tuple[int, int, int, int]:
    """An anchor option's cost (lower is better); `keys` distinct."""
    if len(keys) == 1:  # most options: the same figures, without the generators
        (key,) = keys
        return key.startswith(_COARSE), counts.get(key, 0) if counts else 0, 1, -len(key)
    coarse = sum(key.startswith(_COARSE) for key in keys)
    seen = sum(counts.get(key, 0) for key in keys) if counts else 0
    return coarse, seen, len(keys), -min(map(len, keys))


def _history_counts(papers: Iterable[Paper]) -> Counter[str]:
    """Of each key, in how many of these papers it appears (their features); of each prefix
    anchor (`p:` and 3 to 6 letters), how many of their distinct words it begins, paper by
    paper: a paper with two such words counts twice, a tenth of the work of cutting every
    paper's words. Counts only guide the choice of anchors: any choice matches exactly."""
    counts: Counter[str] = Counter()
    words: Counter[str] = Counter()
    for paper in papers:
        view = PaperView(paper)
        counts.update(view.features)
        words.update(view.all_raw)
    prefixes: Counter[str] = Counter()
    for word, seen in words.items():
        # A word shorter than a size is no prefix anchor of that size (nor one under MIN_PREFIX).
        for size in range(MIN_PREFIX, min(len(word), PREFIX_ANCHOR_MAX) + 1):
            prefixes["p:" + word[:size]] += seen
    counts.update(prefixes)
    return counts


_ONE: Mapping[int, ChannelRef] = MappingProxyType({})  # the `subs` of an entry with one subscription


@dataclass(eq=False, slots=True)  # compared and hashed by identity: entries are kept in sets
class _Entry:
    """One distinct query text, shared by every subscription (in any channel) that uses it."""

    query: str
    node: tuple
    # Tuples, not sets (each key distinct): a frozenset is 216 bytes, a 1-tuple 48, and every
    # byte an entry keeps is ~500 kB at a million subscriptions. `_offers` looks them up.
    keys: tuple[str, ...] | None  # its anchors
    required: tuple[str, ...]  # features a matching paper has, all of them
    clauses: tuple[tuple[str, ...], ...]  # sets of features of which it has at least one each
    # Its subscriptions, when it has more than one (`sole` is None then); else `_ONE` (empty):
    # most have one, and a dict of one is 224 bytes (~100 MB a worker at a million).
    subs: Mapping[int, ChannelRef] = field(default_factory=lambda: _ONE)
    # Indexed under each anchor and, below it, each of these: another required key, or else
    # every key of one of its clauses (`(a OR b) c`: under c, then a and b); a candidate only
    # for papers with one of its anchors and one of these.
    second: tuple[str, ...] | None = None
    # For the commonest shapes, words and OR groups of words (`diffusion`, `language agents`,
    # `title:x y`, `(a OR b) c`): `_word_clauses`, decided by set lookups without walking the
    # tree (and without the required-keys filter, which would look up as much).
    words: tuple | None = None
    # Its one subscription, when it has one (most have): a match is made from these two slots
    # without going through a dict (on a large index every object visited is a cache miss).
    sole: int | None = None
    sole_channel: ChannelRef | None = None
    # Two more shapes decided without walking the tree as `evaluate` does (`_shortcut`): a
    # prefix alone (`transform*`), and words with some left out (`diffusion -survey`).
    shortcut: tuple | None = None


def _entry(query: str, node: tuple, counts: Mapping[str, int] | None) -> _Entry:
    return _entry_from(query, _compile(node), counts)


def _compile(node: tuple) -> tuple:
    """What an entry keeps of a query, but its anchors (they depend on the counts of recent
    papers): (tree, required keys, wider clauses, word clauses, plain, anchor options). Plain
    values only, so that `marshal` stores it (see `compile_query`). Plain: words anywhere,
    all required, anchored on the rarest (the options are not kept)."""
    words = _word_clauses(node)
    if words is not None and not any(words[3::4]) and all(field == "any" for field in words[2::4]):
        # The commonest shape, quicker than the general case below (same result).
        return (node, tuple(dict.fromkeys(words[0::4])), (), words, True, None)
    clauses = requirements(node)
    required = tuple(dict.fromkeys(key for clause in clauses if len(clause) == 1 for key in clause))
    wider = tuple(dict.fromkeys(tuple(sorted(clause)) for clause in clauses if len(clause) > 1))
    return (node, required, wider, words, False, _anchor_options(node))


def _entry_from(query: str, compiled: tuple, counts: Mapping[str, int] | None) -> _Entry:
    """The entry of a compiled query (`_compile`), with its anchors and second keys chosen by
    `counts` (see `anchors` and `_seconds`)."""
    node, required, wider, words, plain, options = compiled
    seen = counts or {}
    if plain:  # anchored on its rarest word, as `anchors` would choose it: the first of the rarest, longest
        anchor = required[0]
        size = len(required)
        if size == 1:
            return _Entry(query, node, (anchor,), required, (), _ONE, None, words)
        rarest = (seen.get(anchor, 0), -len(anchor))
        for word in required[1:]:
            seen_len = (seen.get(word, 0), -len(word))
            if seen_len < rarest:
                anchor, rarest = word, seen_len
        # Its second key, as `_seconds` chooses it: the other word, or the rarest other one.
        if size == 2:
            second = required[1] if anchor == required[0] else required[0]
        else:
            second = min([word for word in required if word != anchor], key=lambda k: (seen.get(k, 0), -len(k), k))
        return _Entry(query, node, (anchor,), required, (), _ONE, (second,), words)
    keys: tuple[str, ...] | None
    if options is False:
        found = anchors(node, counts)
        keys = None if found is None else tuple(found)
    elif options is None:
        keys = None
    elif len(options) == 1:
        keys = options[0]
    else:  # the first of the cheapest, as `anchors` picks it
        chosen, best = None, None
        for option in options:
            if len(option) == 1:  # most: _cost's figures, without calling it
                key = option[0]
                cost = (key.startswith(_COARSE), seen.get(key, 0), 1, -len(key))
            else:
                cost = _cost(option, counts)
            if best is None or cost < best:
                chosen, best = option, cost
        assert chosen is not None
        keys = chosen
    second = None if keys is None else _seconds(keys, required, wider, seen)
    if keys is not None and len(keys) == 1:
        if node[0] == "prefix":
            keys = ("p:" + node[2],)  # its whole prefix: see below
        elif node[0] == "and":
            if second is None and not keys[0].startswith("p:"):
                # Its one anchor leaves no second key (`agent* planning`: under planning, a
                # candidate for every paper with that word). With a prefix among its terms, it
                # goes under the prefix and then its anchor: a feature every match has, as
                # every match has a word that begins so.
                prefix = _rarest_prefix(node[1], seen)
                if prefix is not None:
                    keys, second = ("p:" + prefix,), keys
            elif keys[0].startswith("p:"):  # one of its prefixes, unless an OR of some gave it
                prefix = _rarest_prefix(node[1], seen, keys[0])
                if prefix is not None:
                    keys = ("p:" + prefix,)
    return _Entry(query, node, keys, required, wider, _ONE, second, words, None, None,
                  None if words is not None else _shortcut(node))


# A prefix anchor names a prefix's first PREFIX_ANCHOR_MAX letters, as `anchors` chooses them
# (recent papers are counted by those); the index keeps the whole prefix (`transformer*`
# under `p:transformer`, not `p:transf`: a candidate only for papers with a word that begins
# so). Finding it costs no more: what each word begins is looked up once (`_PrefixHits`).


def _rarest_prefix(children: tuple, counts: Mapping[str, int], anchor: str | None = None) -> str | None:
    """Of the prefixes among an AND's children (of those whose anchor is `anchor`, if given),
    the rarest by the counts of their anchors (`p:` and the first letters), the longest among
    equals; None if there is none."""
    found, best = None, None
    for child in children:
        if child[0] == "prefix":
            key = "p:" + child[2][:PREFIX_ANCHOR_MAX]
            if anchor is not None and key != anchor:
                continue
            cost = (counts.get(key, 0), -len(child[2]))
            if best is None or cost < best:
                found, best = child[2], cost
    return found


def _seconds(anchors_: tuple[str, ...], required: tuple[str, ...], clauses: tuple[tuple[str, ...], ...],
             counts: Mapping[str, int]) -> tuple[str, ...] | None:
    """The keys of the second level an entry goes under, below each of its anchors, if any:
    on real text a query's rarest word is still in a few percent of papers, two of them far
    fewer."""
    others = [key for key in required if key not in anchors_]
    if len(others) == 1:  # most entries: a query of two words, or a word and something else
        return (others[0],)
    if others:  # the rarest other required key
        return (min(others, key=lambda k: (counts.get(k, 0), -len(k), k)),)
    # A matching paper has one key of each clause: all those of the rarest clause (but a
    # clause an anchor is in, which every paper found by that anchor offers).
    found = [clause for clause in clauses if not any(key in anchors_ for key in clause)]
    if found:
        return min(found, key=lambda c: (sum(counts.get(k, 0) for k in c), len(c), c))  # each sorted already
    return None


# ---- the compiled form of a query, stored with its subscription --------------------------
#
# Parsing and compiling 100,000 stored queries is most of the first index load (seconds);
# reading back their compiled form with `marshal` is a tenth of it. Storage writes
# `compile_query(query)` beside each subscription's query (when it is stored or changed;
# migration m021 filled the existing ones), and `IndexedMatcher.add` uses it when its
# version is this build's. The version is COMPILED_FORMAT and a digest of the code that
# decides the compiled form (the whole query language module, the functions here that
# `_compile` calls, and PREFIX_ANCHOR_MAX): any change to them makes every stored form stale,
# which is then
# parsed afresh (the same tree as before the change could not be trusted) and stored again
# (Poller.sync_subscriptions writes back what `take_recompiled` gives). Bump
# COMPILED_FORMAT for a change the digest cannot see (a Python without source files).

COMPILED_FORMAT = 2  # 2: word clauses and anchor options


def _compiled_version() -> bytes:
    digest = hashlib.sha256(f"{COMPILED_FORMAT}:{marshal.version}:{PREFIX_ANCHOR_MAX}".encode())
    try:
        digest.update(inspect.getsource(_query_module).encode())
        for function in (requirements, anchors, _word_clauses, _anchor_options, _phrase_options, _pairs,
                         _author_key, _compile):
            digest.update(inspect.getsource(function).encode())
    except (OSError, TypeError):  # no source files: COMPILED_FORMAT alone
        pass
    return b"q" + digest.hexdigest()[:7].encode()  # 8 bytes, at the head of every stored form


def compile_query(query: str) -> bytes:
    """The stored compiled form of a (normalized) query; raises QueryError as parse_query does."""
    return COMPILED_VERSION + marshal.dumps(_compile(parse_query(query)))


def load_compiled(blob: bytes | None) -> tuple | None:
    """The compiled form stored by `compile_query`; None if absent or of another version."""
    if blob is None or not blob.startswith(COMPILED_VERSION):
        return None
    try:
        return marshal.loads(blob[8:])
    except (ValueError, EOFError, TypeError):  # a damaged value: parsed afresh instead
        return None


def _offers(entry: _Entry, features: set[str]) -> bool:
    """Whether a paper with these features has every key the entry requires, and one of
    each of its clauses."""
    if not features.issuperset(entry.required):
        return False
    for clause in entry.clauses:
        if features.isdisjoint(clause):
            return False
    return True


def _word_clauses(node: tuple) -> tuple | None:
    """An AND of words and of OR groups of words (or one of these alone) as one flat tuple of
    (stem, text, field, joined) quadruples in the tree's order, `joined` true for a word in
    the same OR group as the one before it; None for any other shape. `_word_hits` decides
    it as `evaluate` decides the tree."""
    found: list = []
    for clause in node[1] if node[0] == "and" else (node,):
        leaves = clause[1] if clause[0] == "or" else (clause,)
        for i, leaf in enumerate(leaves):
            if leaf[0] != "word":
                return None
            found += (leaf[2], leaf[3], leaf[1], i > 0)
    return tuple(found)


def _word_hits(words: tuple, title: frozenset[str], abstract: frozenset[str]) -> list[str] | None:
    """What `evaluate` gives for the tree `words` (`_word_clauses`) was made from."""
    hits = []
    found = True  # whether the OR group (or word) before this one matched
    it = iter(words)
    for word, text, scope, joined in zip(it, it, it, it, strict=True):
        if not joined:
            if not found:
                return None
            found = False
        if scope != "abstract" and word in title:
            hits.append(text + " in title")
            found = True
        elif scope != "title" and word in abstract:
            hits.append(text + " in abstract")
            found = True
    return hits if found else None


def _shortcut(node: tuple) -> tuple | None:
    """The tree itself for the shapes that `_shortcut_hits` decides without walking it as
    `evaluate` does: a prefix alone (`transform*`), and an AND (`diffusion -survey`,
    `agent* planning`, `"language model" upvotes>=10`); None for any other (words alone have
    `_word_clauses`). No new object is kept: at a million subscriptions every byte an entry
    adds is ~600 kB."""
    if node[0] == "prefix" or (node[0] == "and" and _word_clauses(node) is None):
        return node
    return None


def _shortcut_hits(node: tuple, view: PaperView) -> list[str] | None:
    """What `evaluate` gives for `node`, one of `_shortcut`'s shapes."""
    if node[0] == "prefix":
        # As evaluate's "prefix", without its first rejection: a prefix alone is found by
        # its own first letters (its anchor) or is always evaluated; the bisection decides either way.
        return _prefix_hits(node, view)
    # As evaluate's "and", its commonest children decided here: words, words left out, upvotes.
    title, abstract = view.title_set, view.abstract_set
    hits: list[str] = []
    for child in node[1]:
        kind = child[0]
        if kind == "word":
            scope, word = child[1], child[2]
            if scope != "abstract" and word in title:
                hits.append(f"{child[3]} in title")
            elif scope != "title" and word in abstract:
                hits.append(f"{child[3]} in abstract")
            else:
                return None
        elif kind == "not" and child[1][0] == "word":
            scope, word = child[1][1], child[1][2]
            if (scope != "abstract" and word in title) or (scope != "title" and word in abstract):
                return None
        elif kind == "upvotes":
            upvotes = view.paper.upvotes
            if upvotes is None or not _COMPARE[child[1]](upvotes, child[2]):
                return None
            hits.append(plural(upvotes, "upvote"))
        elif kind == "phrase" and len(child[2]) == 2 and child[1] != "abstract":
            # A pair of words is a feature: of the title's, or else the abstract's.
            pair = " ".join(child[2])
            if pair in view.title_pairs:
                hits.append(f'"{child[3]}" in title')
            elif child[1] == "any" and pair in view.features:
                hits.append(f'"{child[3]}" in abstract')
            else:
                return None
        else:
            found = evaluate(child, view)
            if found is None:
                return None
            hits += found
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


class _ByPrefix(dict):
    """Of each word met (a paper's raw word), what `tables` (a prefix table a size: the
    engine's prefixes, or their second levels) keep under its first letters, for every size
    (`_under`): kept across papers, and emptied whenever those tables change."""

    __slots__ = ("tables",)

    def __init__(self, tables: dict[int, dict]):
        super().__init__()
        self.tables = tables

    def _under(self, word: str) -> tuple:
        # A table of a size holds prefixes of that length only: a shorter word begins none.
        return tuple([value for size, table in self.tables.items() if len(word) >= size
                      for value in (table.get(word[:size]),) if value])

    def _keep(self, word: str, found: tuple) -> tuple:
        if len(self) >= 200_000:  # a bound, as STEMS has
            self.clear()
        self[word] = found
        return found


class _PrefixHits(_ByPrefix):
    """The buckets of entries (sets) the prefix tables keep under a word's first letters;
    () for most words."""

    __slots__ = ()

    def __missing__(self, word: str) -> tuple:
        return self._keep(word, self._under(word))


class _PrefixLevels(_ByPrefix):
    """The second levels (dicts) the prefix second levels keep under a word's first letters,
    and all these levels' keys together (a frozenset: `_found` tests it against a paper's
    features before walking the levels); () for most words. The keys are a copy: emptied
    with the rest when those tables change, they do not go stale."""

    __slots__ = ()

    def __missing__(self, word: str) -> tuple:
        levels = self._under(word)
        return self._keep(word, (levels, frozenset().union(*levels)) if levels else ())


_SECOND = operator.itemgetter(1)


class IndexedMatcher:
    """The engine: candidates from an inverted index of query anchors, a required-keys
    filter, then exact evaluation."""

    def __init__(self, subscriptions: Iterable[Subscription] = (), *, papers: Iterable[Paper] = ()):
        """`papers`: recent papers whose key counts help pick each query's rarest anchor."""
        self.counts = _history_counts(papers)
        self._entries: dict[str, _Entry] = {}  # query text -> entry
        self._by_sub: dict[int, str] = {}  # subscription id -> query text
        # anchor -> entries: feature keys in one table, looked up with the paper's
        # features; prefix anchors by length, by prefix, looked up with its words' prefixes.
        self._keys: dict[str, set[_Entry]] = {}
        # Entries with one anchor and another required key, by both: on real text a
        # query's rarest word is still in a few percent of papers, two of them far fewer.
        self._pairs: dict[str, dict[str, set[_Entry]]] = {}
        self._prefixes: dict[int, dict[str, set[_Entry]]] = {}
        self._prefix_pairs: dict[int, dict[str, dict[str, set[_Entry]]]] = {}  # by length, prefix, second key
        self._always: set[_Entry] = set()  # entries with no anchor
        self._prefix_hits = _PrefixHits(self._prefixes)
        self._prefix_levels = _PrefixLevels(self._prefix_pairs)
        self._recompiled: dict[int, bytes] = {}  # see take_recompiled
        self._generation = 0  # changes with every add and remove: a forked pool is stale then
        self._pool: ProcessPoolExecutor | None = None
        self._pool_key: tuple[int, int] = (-1, 0)  # the generation and size it was forked with
        for subscription in subscriptions:
            self.add(subscription)

    def __len__(self) -> int:
        return len(self._by_sub)

    def ids(self) -> set[int]:
        return set(self._by_sub)

    def add(self, subscription: Subscription) -> None:
        sub_id, query, channel = subscription.id, subscription.query, subscription.channel
        if sub_id in self._by_sub:
            self.remove(sub_id)
        entry = self._entries.get(query)
        if entry is None:
            compiled = load_compiled(subscription.compiled)
            if compiled is None:  # never stored, or by another version: parsed afresh
                compiled = _compile(parse_query(query))
                self._recompiled[sub_id] = COMPILED_VERSION + marshal.dumps(compiled)
            entry = self._entries[query] = _entry_from(query, compiled, self.counts)
            self._index(entry)
        elif subscription.compiled is None or subscription.compiled[:8] != COMPILED_VERSION:
            self._recompiled[sub_id] = compile_query(query)
        sole = entry.sole
        if sole is not None:  # its second subscription
            entry.subs = {sole: cast(ChannelRef, entry.sole_channel), sub_id: channel}
            entry.sole = entry.sole_channel = None
        elif entry.subs:  # a third, or later
            cast("dict[int, ChannelRef]", entry.subs)[sub_id] = channel
        else:  # its first
            entry.sole, entry.sole_channel = sub_id, channel
        self._by_sub[sub_id] = query
        self._generation += 1

    def take_recompiled(self) -> dict[int, bytes]:
        """Subscriptions added since the last call whose stored compiled form was missing or
        stale, with their fresh one (`compile_query`): for storage to keep."""
        found, self._recompiled = self._recompiled, {}
        return found

    def remove(self, subscription_id: int) -> None:
        self._recompiled.pop(subscription_id, None)
        query = self._by_sub.pop(subscription_id, None)
        if query is None:
            return
        self._generation += 1
        entry = self._entries[query]
        if entry.sole is None:  # one of several
            subs = cast("dict[int, ChannelRef]", entry.subs)
            del subs[subscription_id]
            if len(subs) == 1:
                (entry.sole, entry.sole_channel), = subs.items()
                entry.subs = _ONE
            return
        del self._entries[query]
        if entry.keys is None:
            self._always.discard(entry)
            return
        if entry.second is not None:
            for anchor in entry.keys:
                top, name = self._second_level(anchor)
                level = top[name]
                for key in entry.second:
                    bucket = level[key]
                    bucket.discard(entry)
                    if not bucket:
                        del level[key]
                if not level:
                    del top[name]
                    if anchor.startswith("p:") and not top:
                        del self._prefix_pairs[len(name)]
            return
        for key in entry.keys:
            table, name = self._table(key)
            bucket = table[name]
            bucket.discard(entry)
            if not bucket:
                del table[name]
                if key.startswith("p:") and not table:
                    del self._prefixes[len(name)]

    def _index(self, entry: _Entry) -> None:
        if entry.keys is None:
            self._always.add(entry)
            return
        seconds = entry.second
        if seconds is not None:
            for anchor in entry.keys:
                if anchor.startswith("p:"):
                    top, name = self._second_level(anchor)
                else:  # most
                    top, name = self._pairs, anchor
                level = top.get(name)
                if level is None:
                    top[name] = level = {}
                for key in seconds:
                    bucket = level.get(key)
                    if bucket is None:
                        level[key] = {entry}
                    else:
                        bucket.add(entry)
            return
        for key in entry.keys:
            table, name = self._table(key)
            bucket = table.get(name)
            if bucket is None:
                table[name] = {entry}
            else:
                bucket.add(entry)

    def _second_level(self, anchor: str) -> tuple[dict[str, dict[str, set[_Entry]]], str]:
        if anchor.startswith("p:"):
            if self._prefix_levels:  # the prefix tables change: what words found there is stale
                self._prefix_levels.clear()
            return self._prefix_pairs.setdefault(len(anchor) - 2, {}), anchor[2:]
        return self._pairs, anchor

    def _table(self, key: str) -> tuple[dict[str, set[_Entry]], str]:
        if key.startswith("p:"):
            if self._prefix_hits:
                self._prefix_hits.clear()
            return self._prefixes.setdefault(len(key) - 2, {}), key[2:]
        return self._keys, key

    def is_empty(self) -> bool:
        return not (self._entries or self._keys or self._pairs or self._prefixes or self._prefix_pairs
                    or self._always)

    def candidates(self, view: PaperView) -> list[_Entry]:
        """The entries to evaluate for this paper: anchored on its keys and offered all
        that they require (but entries of words, whose evaluation looks up as much)."""
        features = view.features
        return [entry for entry in self._found(view) if entry.words is not None or _offers(entry, features)]

    def _found(self, view: PaperView) -> set[_Entry]:
        """The entries anchored on the paper's keys."""
        features = view.features
        keys = self._keys
        found = set(self._always)
        found.update(*map(keys.__getitem__, keys.keys() & features))  # the smaller side is walked, in C
        pairs = self._pairs
        for key in pairs.keys() & features:
            seconds = pairs[key]
            for second in seconds.keys() & features:
                found |= seconds[second]
        # What each word begins, from what the words of earlier papers found (in C, but for
        # words not met yet): not the paper's words cut to each size and looked up.
        if self._prefixes:
            found.update(*chain.from_iterable(filter(None, map(self._prefix_hits.__getitem__, view.all_raw))))
        if self._prefix_pairs:
            levels = list(filter(None, map(self._prefix_levels.__getitem__, view.all_raw)))
            # Only the levels of words whose second keys (all their levels' together, a
            # frozenset: tested on its stored hashes) the paper offers one of, picked in C: on
            # real text ~3 % of them.
            for word_levels, _ in compress(levels, map(operator.not_, map(features.isdisjoint, map(_SECOND, levels)))):
                for level in word_levels:
                    for second in level.keys() & features:
                        found |= level[second]
        return found

    def _hits(self, paper: Paper) -> list[tuple[_Entry, tuple[str, ...]]]:
        """Each matching entry, with the terms that made it match (in no particular order)."""
        view = PaperView(paper)
        features = view.features
        title, abstract = view.title_set, view.abstract_set
        found: list[tuple[_Entry, tuple[str, ...]]] = []
        add = found.append
        for entry in self._found(view):
            words = entry.words
            if words is not None:
                hits = _word_hits(words, title, abstract)
            else:
                shortcut = entry.shortcut
                if shortcut is not None:  # exact on its own: no required-keys filter needed
                    # A prefix alone (`transform*`, many of them) straight to its bisection.
                    hits = _prefix_hits(shortcut, view) if shortcut[0] == "prefix" else _shortcut_hits(shortcut, view)
                elif _offers(entry, features):
                    hits = evaluate(entry.node, view)
                else:
                    continue
            if hits is not None:
                add((entry, tuple(hits)))
        return found

    def match(self, paper: Paper) -> list[Match]:
        new = tuple.__new__  # Match's own __new__ is Python code: this is the same tuple, made in C
        found: list[Match] = []
        add = found.append
        for entry, terms in self._hits(paper):
            sole = entry.sole
            if sole is not None:
                add(new(Match, (sole, entry.sole_channel, entry.query, terms)))
            else:
                query = entry.query
                for sub_id, channel in entry.subs.items():
                    add(new(Match, (sub_id, channel, query, terms)))
        found.sort()  # by subscription id: ids are unique, so the tuple order is decided there
        return found

    def match_many(self, papers: Sequence[Paper], processes: int = 1) -> list[list[Match]]:
        """Each paper's matches, exactly as `match` gives them, in the order of `papers`.

        With `processes` > 1 and enough papers, worker processes forked from this one
        match them side by side: they share the index with this process (copy on write,
        their garbage collector kept off it) instead of loading their own. They are forked
        on first use and again after subscriptions change, and kept between calls; `close`
        ends them. Callable from any one thread at a time; a worker that dies makes this
        call match in-process instead.
        """
        if processes <= 1 or len(papers) < 2 * MIN_PAPERS_PER_PROCESS:
            return [self.match(paper) for paper in papers]
        size = max(MIN_PAPERS_PER_PROCESS, -(-len(papers) // (4 * processes)))
        chunks = [papers[i:i + size] for i in range(0, len(papers), size)]
        try:
            pool = self._forked_pool(processes)
            futures = [pool.submit(_match_in_worker, self._generation, chunk) for chunk in chunks]
            entries = self._entries
            return [self._matches((entries[query], terms) for query, terms in hits)
                    for future in futures for hits in future.result()]
        except (BrokenProcessPool, OSError) as exc:
            log.warning("matching in worker processes failed (%s: %s); matching in this one", type(exc).__name__, exc)
            self.close()
            return [self.match(paper) for paper in papers]

    def _forked_pool(self, processes: int) -> ProcessPoolExecutor:
        global _FORKED
        if self._pool is not None and self._pool_key == (self._generation, processes):
            return self._pool
        self.close()
        pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_worker_started)
        _FORKED = self
        try:
            pool.submit(int).result()  # with "fork", every worker starts now, copying the index as it is
        finally:
            _FORKED = None
        self._pool, self._pool_key = pool, (self._generation, processes)
        return pool

    def close(self) -> None:
        """End the worker processes of `match_many`, if any."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _matches(hits: Iterable[tuple[_Entry, tuple[str, ...]]]) -> list[Match]:
        new = tuple.__new__  # Match's own __new__ is Python code: this is the same tuple, made in C
        found = [new(Match, (sub_id, channel, entry.query, terms)) for entry, terms in hits
                 for sub_id, channel in (entry.subs.items() if entry.sole is None else
                                         ((entry.sole, entry.sole_channel),))]
        found.sort()  # by subscription id: ids are unique, so the tuple order is decided there
        return found

# Fewer papers than this per worker process are matched faster than they are sent to it.
MIN_PAPERS_PER_PROCESS = 16

# The engine a worker process matches with: set while the workers are forked, and read in
# their copy of this process's memory (so the index is never pickled or rebuilt).
_FORKED: IndexedMatcher | None = None
_WORKER_ENGINE: IndexedMatcher | None = None


def _worker_started() -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = _FORKED
    # Everything inherited (the index above all) goes to the permanent generation: the
    # collector never walks it, so its pages stay shared with the parent.
    gc.freeze()


def _match_in_worker(generation: int, papers: Sequence[Paper]) -> list[list[tuple[str, tuple[str, ...]]]]:
    """In a worker: each paper's matching query texts and terms (plain values: the parent
    turns them into Matches with its own subscriptions)."""
    engine = _WORKER_ENGINE
    if engine is None or engine._generation != generation:
        raise RuntimeError("worker forked from another version of the index")
    return [[(entry.query, terms) for entry, terms in engine._hits(paper)] for paper in papers]


COMPILED_VERSION = _compiled_version()  # here: after every function it digests


def _label(source: str) -> str:
    """The source's name for people, from the registry."""
    found = sources.spec(source)
    return found.label if found else source
