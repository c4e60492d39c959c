"""The word index that narrows `preview` (and subscribe's estimate) before the exact evaluator.

`paper_words` is a contentless FTS5 table holding each paper's words exactly as
bot/matching.py's PaperView sees them: title and abstract as the stems of their folded
words (for words and phrases), and again as their distinct folded words unstemmed (for
prefixes: the evaluator compares a prefix with the words, not their stems), each author
as the matcher's keys (the last name part, and the last name joined to each other part:
`lecun lecun.yann`), categories and their archives (`cs.cl cs`). Its tokenizer is `ascii`
with `.` and `-` as token characters: the text it is given is those tokens joined by
spaces, and no token holds an ASCII separator, so FTS5's tokens are the evaluator's
tokens, one for one (no stemmer of its own, no Unicode rules of its own: the full-text
index `papers_fts` behind `search` uses Porter stemming and would disagree with the
evaluator on words such as "buses").

`narrowing(node)` turns a query tree into an FTS5 expression that every paper the query
matches satisfies, plus SQL conditions on the papers table for upvote, source and
organization terms (an organization by LIKE, then decided by `papers_bot_org`, a function
this module registers on the connection). Only terms that are certainly required narrow:
the children of an AND (or their NOT), every branch of an OR (an OR with a branch that
cannot narrow does not narrow at all), and a NOT only when FTS5 decides the term it
excludes exactly. `exact` says when the narrowing decides the query by itself: every term
but author names of three parts or more (then preview counts matches in SQL).

Title, summary, authors and categories never change once a paper is stored (a later
listing only enriches upvotes, organization and links), so rows are indexed once, by
rowid. `paper_words_state.indexed`: every rowid above it is new, not indexed yet;
`index_new` catches up on them in order, in short transactions (it tokenizes before taking
the write lock). `paper_words_state.backlog`: every rowid up to it is not indexed yet
either; that is what was stored before this index existed (m022 sets both marks to the
last rowid), and `index_backlog` works through it newest first, so that the papers
preview looks at (the last 30 days) are indexed first. Readers read the rows past either
mark unnarrowed, so no paper is ever missed while the index catches up. Papers are never
deleted, and nothing VACUUMs the database (which could renumber rowids; `papers_fts`
relies on them as well).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable

from sqlite_utils import Database

from bot.query import STEMS, WordCache, fold, name_tokens, raw_words, stem

from .db import immediate

CATCH_UP_BATCH = 200  # papers a transaction: tokenized before it, it holds the write lock a few ms
_CATEGORY = re.compile(r"^[a-z-]+(\.[a-z-]+)?$")  # what a cat: term can name (bot/query.py)

COLUMNS = ("title", "abstract", "title_raw", "abstract_raw", "author_keys", "cats")
SCHEMA = (
    f"""CREATE VIRTUAL TABLE IF NOT EXISTS paper_words USING fts5(
           {", ".join(COLUMNS)}, content='', columnsize=0, tokenize="ascii tokenchars '.-'")""",
    "CREATE TABLE IF NOT EXISTS paper_words_state (indexed INTEGER NOT NULL, backlog INTEGER NOT NULL DEFAULT 0)",
    "INSERT INTO paper_words_state (indexed) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM paper_words_state)",
)
ORG_FUNCTION = "papers_bot_org"

_COLUMNS = {"any": "{title abstract}", "title": "title", "abstract": "abstract"}
_RAW_COLUMNS = {"any": "{title_raw abstract_raw}", "title": "title_raw", "abstract": "abstract_raw"}


def stems(text: str) -> str:
    """A title's or abstract's words as the evaluator compares them, joined by spaces."""
    return " ".join(stem(w) for w in raw_words(text))


def distinct_words(text: str) -> str:
    """A title's or abstract's distinct folded words (unstemmed), joined by spaces: for prefixes."""
    return " ".join(dict.fromkeys(raw_words(text)))


def author_keys(authors: list[str]) -> str:
    """Each author's last name part, and it joined to each other part (`lecun lecun.yann`):
    an author term of one or two parts matches a paper exactly when its key is there."""
    return " ".join(dict.fromkeys(chain.from_iterable(map(_NAME_KEYS.__getitem__, authors))))


def _name_keys(name: str) -> tuple[str, ...]:
    tokens = name_tokens(name)
    if not tokens:
        return ()
    last = tokens[-1]
    return (last, *(f"{last}.{t}" for t in tokens[:-1]))


# An author's keys, once a name: names come back paper after paper (~5 MB when full).
_NAME_KEYS = WordCache(_name_keys, 20_000)


def category_tokens(categories: list[str]) -> str:
    tokens: list[str] = []
    for category in categories:
        value = fold(category)
        for token in (value, value.split(".")[0]):
            if _CATEGORY.match(token) and token not in tokens:
                tokens.append(token)
    return " ".join(tokens)


def org_matches(organization: str | None, tokens: str) -> int:
    """`org:` as the evaluator decides it: the term's name parts, in order, among the organization's."""
    if not organization:
        return 0
    have, want = raw_words(organization), tokens.split(" ")
    size = len(want)
    return int(any(have[i:i + size] == want for i in range(len(have) - size + 1)))


def register(conn: sqlite3.Connection) -> None:
    """The SQL function the narrowing's organization conditions call, on this connection."""
    conn.create_function(ORG_FUNCTION, 2, org_matches, deterministic=True)


def _row(rowid: int, title: str, summary: str, authors: str, categories: str) -> tuple:
    title_words, abstract_words = raw_words(title), raw_words(summary)  # once each: most of the time
    stems = STEMS.__getitem__  # bot.query.stem of each word, from a plain dict (shared with the matcher)
    return (rowid, " ".join(map(stems, title_words)), " ".join(map(stems, abstract_words)),
            " ".join(dict.fromkeys(title_words)), " ".join(dict.fromkeys(abstract_words)),
            author_keys(json.loads(authors)), category_tokens(json.loads(categories)))


_INSERT = (f"INSERT INTO paper_words (rowid, {', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})")


def index_new(db: Database, batch: int | None = None, stop: Callable[[], bool] | None = None,
              limit: int | None = None) -> int:
    """Index the papers stored since the last call, `batch` at a time; how many were indexed.

    Papers are read and tokenized without a lock; the write lock is taken only to add
    them, and the mark is checked inside it, so two callers never index a row twice.
    `stop`, when it says so before a batch, ends the catch-up there, and so does having
    indexed `limit` papers (the rest is indexed by the next call; readers read it
    unnarrowed meanwhile).
    """
    batch = batch or CATCH_UP_BATCH
    done = 0
    while limit is None or done < limit:
        if stop is not None and stop():
            return done
        mark = db.execute("SELECT indexed FROM paper_words_state").fetchone()[0]
        rows = db.execute(
            "SELECT rowid, title, summary, authors, categories FROM papers WHERE rowid > ? ORDER BY rowid LIMIT ?",
            [mark, batch],
        ).fetchall()
        if not rows:
            return done
        values = [_row(*row) for row in rows]
        with immediate(db):
            if db.execute("SELECT indexed FROM paper_words_state").fetchone()[0] != mark:
                continue  # another caller indexed these meanwhile
            db.conn.executemany(_INSERT, values)
            db.execute("UPDATE paper_words_state SET indexed = ?", [rows[-1][0]])
        done += len(rows)
        if len(rows) < batch:
            return done
    return done


def reindex(db: Database, paper_id: str) -> None:
    """Inside add_papers' transaction, for a paper whose categories a later listing just
    filled in (they were `[]`): if it is indexed already, its words are replaced (a
    contentless table forgets a row by the 'delete' command given the values it indexed);
    if not, the catch-up indexes it as it is now."""
    row = db.execute("SELECT rowid, title, summary, authors, categories FROM papers WHERE id = ?",
                     [paper_id]).fetchone()
    indexed, backlog = db.execute("SELECT indexed, backlog FROM paper_words_state").fetchone()
    if row is None or row[0] > indexed or row[0] <= backlog:
        return
    db.execute(f"INSERT INTO paper_words (paper_words, rowid, {', '.join(COLUMNS)}) "
               f"VALUES ('delete', {', '.join('?' * (len(COLUMNS) + 1))})", _row(row[0], row[1], row[2], row[3], "[]"))
    db.execute(_INSERT, _row(*row))


def index_backlog(db: Database, batch: int | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Index what was stored before the index existed (rowids up to the `backlog` mark),
    newest first, `batch` a transaction; how many were indexed. `stop` as for index_new."""
    batch = batch or CATCH_UP_BATCH
    done = 0
    while True:
        if stop is not None and stop():
            return done
        mark = db.execute("SELECT backlog FROM paper_words_state").fetchone()[0]
        if mark <= 0:
            return done
        rows = db.execute(
            """SELECT rowid, title, summary, authors, categories FROM papers WHERE rowid <= ?
                ORDER BY rowid DESC LIMIT ?""",
            [mark, batch],
        ).fetchall()
        # Added in rowid order all the same: FTS5 writes out what it holds whenever a rowid
        # comes lower than the one before (in descending order, every row a segment: 20x slower).
        values = [_row(*row) for row in reversed(rows)]
        with immediate(db):
            if db.execute("SELECT backlog FROM paper_words_state").fetchone()[0] != mark:
                continue  # another caller indexed these meanwhile
            db.conn.executemany(_INSERT, values)
            db.execute("UPDATE paper_words_state SET backlog = ?", [rows[-1][0] - 1 if len(rows) == batch else 0])
        done += len(rows)


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


def _condition(node: tuple) -> tuple[str, list[object]] | None:
    """An SQL condition over papers deciding `node` exactly (upvotes, source, organization), or None."""
    kind = node[0]
    if kind == "upvotes":
        return f"(upvotes IS NOT NULL AND upvotes {node[1]} ?)", [node[2]]
    if kind == "source":  # a paper's source is the first of its sorted sources
        return "(sources = ? OR substr(sources, 1, ?) = ?)", [node[1], len(node[1]) + 1, node[1] + ","]
    if kind == "org":
        # LIKE first (in C): each name part, in any case, somewhere in the name (LIKE folds
        # ASCII only, so a name with other characters is kept); the function then decides.
        likes = " AND ".join("(organization LIKE ? OR organization GLOB '*[^ -~]*')" for _ in node[1])
        # tokens are letters and digits: no LIKE wildcard among them
        return (f"({likes} AND {ORG_FUNCTION}(organization, ?))",
                [*(f"%{token}%" for token in node[1]), " ".join(node[1])])
    return None


def narrowing(node: tuple) -> Narrowing:
    """The narrowing for a query tree (see the module's docstring); always safe to apply.

    `exact` when every term the query requires or excludes at its top (the children of
    its AND, or itself) is one FTS5 or SQL decides exactly: words, phrases, prefixes,
    categories, author names of one or two parts, OR and NOT of those; upvotes, source
    and organization (and their NOT). An OR holding an upvote, source or organization
    term, or a longer author name, only narrows (or does not).
    """
    found = Narrowing(exact=True)
    excludes = False
    for child in node[1] if node[0] == "and" else (node,):
        negated = child[0] == "not"
        term = child[1] if negated else child
        condition = _condition(term)
        if condition is not None:
            sql, params = condition
            found.where.append(f"NOT {sql}" if negated else sql)
            found.params += params
            continue
        excludes = excludes or negated
        expr = _fts(term)
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
    if kind == "prefix":  # over the unstemmed words, as the evaluator compares
        return _Expr(f"{_RAW_COLUMNS[node[1]]} : {_phrase([node[2]])} *", True)
    if kind == "author":
        # An author matches when the term's last part is theirs and the others come before it,
        # in order: for one or two parts, exactly when the paper has the key (see author_keys).
        *firsts, last = node[1]
        if len(firsts) <= 1:
            return _Expr(f"author_keys : {_phrase([f'{last}.{t}' for t in firsts] or [last])}", True)
        keys = dict.fromkeys(f"{last}.{t}" for t in firsts)
        return _Expr("(" + " AND ".join(f"author_keys : {_phrase([k])}" for k in keys) + ")", False)
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
