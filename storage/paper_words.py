"""The word index that narrows `preview` (and subscribe's estimate) before the exact evaluator.

`paper_words` is a contentless FTS5 table holding each paper's words exactly as
bot/matching.py's PaperView sees them: title and abstract as the stems of their folded
words, authors as their name tokens, categories and their archives (`cs.cl cs`). Its
tokenizer is `ascii` with `.` and `-` as token characters: the text it is given is those
tokens joined by spaces, and no token holds an ASCII separator, so FTS5's tokens are the
evaluator's tokens, one for one (no stemmer of its own, no Unicode rules of its own: the
full-text index `papers_fts` behind `search` uses Porter stemming and would disagree with
the evaluator on words such as "buses").

`narrowing(node)` turns a query tree into an FTS5 expression that every paper the query
matches satisfies (a superset: the evaluator still decides), plus SQL conditions on the
papers table for upvote and source terms. Only terms that are certainly required narrow:
the children of an AND, every branch of an OR (an OR with a branch that cannot narrow
does not narrow at all), and a NOT only when the term it excludes is matched exactly by
FTS5 (words, phrases, categories). A query with nothing to narrow on scans the window.
Organization terms narrow by SQL (LIKE). `exact` says when the narrowing decides the
query by itself (see `narrowing`): then preview counts matches in SQL.

Title, summary, authors and categories never change once a paper is stored (a later
listing only enriches upvotes, organization and links), so rows are indexed once, by
rowid, in order: `paper_words_state.indexed` is the last rowid indexed. `index_new`
catches up in short transactions (it tokenizes before taking the write lock); readers
also read the rows past that mark, unnarrowed, so a paper stored a moment ago is never
missed. Papers are never deleted, and nothing VACUUMs the database (which could renumber
rowids; `papers_fts` relies on them as well).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

from sqlite_utils import Database

from bot.query import fold, name_tokens, raw_words, stem

from .db import immediate

CATCH_UP_BATCH = 200  # papers a transaction: tokenized before it, it holds the write lock a few ms
_CATEGORY = re.compile(r"^[a-z-]+(\.[a-z-]+)?$")  # what a cat: term can name (bot/query.py)

SCHEMA = (
    """CREATE VIRTUAL TABLE IF NOT EXISTS paper_words USING fts5(
           title, abstract, authors, cats, content='', columnsize=0, tokenize="ascii tokenchars '.-'")""",
    "CREATE TABLE IF NOT EXISTS paper_words_state (indexed INTEGER NOT NULL)",
    "INSERT INTO paper_words_state (indexed) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM paper_words_state)",
)

_COLUMNS = {"any": "{title abstract}", "title": "title", "abstract": "abstract"}


def stems(text: str) -> str:
    """A title's or abstract's words as the evaluator compares them, joined by spaces."""
    return " ".join(stem(w) for w in raw_words(text))


def author_tokens(authors: list[str]) -> str:
    return " ".join(t for name in authors for t in name_tokens(name))


def category_tokens(categories: list[str]) -> str:
    tokens: list[str] = []
    for category in categories:
        value = fold(category)
        for token in (value, value.split(".")[0]):
            if _CATEGORY.match(token) and token not in tokens:
                tokens.append(token)
    return " ".join(tokens)


def index_new(db: Database, batch: int | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Index the papers stored since the last call, `batch` at a time; how many were indexed.

    Papers are read and tokenized without a lock; the write lock is taken only to add
    them, and the mark is checked inside it, so two callers never index a row twice.
    `stop`, when it says so before a batch, ends the catch-up there (the rest is indexed
    by the next call; readers read it unnarrowed meanwhile).
    """
    batch = batch or CATCH_UP_BATCH
    done = 0
    while True:
        if stop is not None and stop():
            return done
        mark = db.execute("SELECT indexed FROM paper_words_state").fetchone()[0]
        rows = db.execute(
            "SELECT rowid, title, summary, authors, categories FROM papers WHERE rowid > ? ORDER BY rowid LIMIT ?",
            [mark, batch],
        ).fetchall()
        if not rows:
            return done
        values = [(rowid, stems(title), stems(summary), author_tokens(json.loads(authors)),
                   category_tokens(json.loads(categories))) for rowid, title, summary, authors, categories in rows]
        with immediate(db):
            if db.execute("SELECT indexed FROM paper_words_state").fetchone()[0] != mark:
                continue  # another caller indexed these meanwhile
            db.conn.executemany(
                "INSERT INTO paper_words (rowid, title, abstract, authors, cats) VALUES (?, ?, ?, ?, ?)", values)
            db.execute("UPDATE paper_words_state SET indexed = ?", [rows[-1][0]])
        done += len(rows)
        if len(rows) < batch:
            return done


@dataclass
class Narrowing:
    """What every paper a query matches satisfies: an FTS5 expression and SQL conditions."""

    match: str | None = None  # over paper_words; None: no word narrows
    where: list[str] = field(default_factory=list)  # over papers, all required
    params: list[object] = field(default_factory=list)
    exact: bool = False  # the papers satisfying both are exactly those the query matches


@dataclass(frozen=True)
class _Expr:
    text: str
    exact: bool  # FTS5 matches exactly the papers the node matches (usable under NOT)


def narrowing(node: tuple) -> Narrowing:
    """The narrowing for a query tree (see the module's docstring); always safe to apply.

    `exact` when every term the query requires (the children of its AND, or itself) is
    one FTS5 or SQL decides exactly: words, phrases, categories, OR and NOT of those,
    upvotes and source. Author name parts, prefixes and organizations only narrow.
    """
    found = Narrowing(exact=True)
    excludes = False
    for child in node[1] if node[0] == "and" else (node,):
        if child[0] == "upvotes":
            found.where.append(f"upvotes IS NOT NULL AND upvotes {child[1]} ?")
            found.params.append(child[2])
        elif child[0] == "source":  # a paper's source is the first of its sorted sources
            found.where.append("(sources = ? OR substr(sources, 1, ?) = ?)")
            found.params += [child[1], len(child[1]) + 1, child[1] + ","]
        elif child[0] == "org":
            # Each name part, in any case, somewhere in the name: LIKE folds ASCII only, so a
            # name with other characters is kept for the evaluator to decide.
            for token in child[1]:
                found.where.append("(organization LIKE ? OR organization GLOB '*[^ -~]*')")
                found.params.append(f"%{token}%")  # tokens are letters and digits: no wildcard
            found.exact = False
        else:
            excludes = excludes or child[0] == "not"
            expr = _fts(child[1] if child[0] == "not" else child)
            found.exact = found.exact and expr is not None and expr.exact
    expr = _fts(node)
    found.match = expr.text if expr else None
    if excludes and found.match is None:  # FTS5 applies a NOT only beside a term it requires
        found.exact = False
    return found


def _phrase(words: tuple[str, ...] | list[str]) -> str:
    return '"' + " ".join(words) + '"'  # tokens hold no quote: they are letters and digits


def _fts(node: tuple) -> _Expr | None:
    kind = node[0]
    if kind == "word":
        return _Expr(f"{_COLUMNS[node[1]]} : {_phrase([node[2]])}", True)
    if kind == "phrase":
        return _Expr(f"{_COLUMNS[node[1]]} : {_phrase(node[2])}", True)
    if kind == "prefix":
        # The evaluator compares a prefix with the folded words, the index holds their
        # stems: a word starting with p has a stem starting with p, unless stemming cut
        # into p itself (it drops at most 3 letters, maybe adding a y): those stems are few.
        p, columns = node[2], _COLUMNS[node[1]]
        cut = {p[:-1], p[:-2], p[:-3] + "y", p[:-2] + "y", p[:-1] + "y"} - {""}
        terms = [f"{columns} : {_phrase([p])} *"] + [f"{columns} : {_phrase([c])}" for c in sorted(cut)]
        return _Expr("(" + " OR ".join(terms) + ")", False)
    if kind == "author":  # every name part is among the paper's authors' tokens
        return _Expr("(" + " AND ".join(f"authors : {_phrase([t])}" for t in node[1]) + ")", False)
    if kind == "cat":
        return _Expr(f"cats : {_phrase([node[1]])}", True)
    if kind == "or":
        parts = [_fts(child) for child in node[1]]
        if any(part is None for part in parts):
            return None
        return _Expr("(" + " OR ".join(p.text for p in parts if p) + ")", all(p.exact for p in parts if p))
    if kind == "and":
        required, excluded, exact = [], [], True
        for child in node[1]:
            inner = _fts(child[1]) if child[0] == "not" else None
            if inner is not None and inner.exact:
                excluded.append(inner.text)
                continue
            part = _fts(child)
            exact = exact and part is not None and part.exact
            if part is not None:
                required.append(part.text)
        if not required:
            return None
        text = "(" + " AND ".join(required) + ")"
        for left_out in excluded:
            text = f"({text} NOT {left_out})"
        return _Expr(text, exact)
    return None  # not (alone), org, source, upvotes: no word to narrow on
