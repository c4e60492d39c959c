"""Papers on PostgreSQL: insert-or-enrich (and the follow-ups it queues), lookup, search,
preview's candidates. Same behaviour as storage/papers.py (storage/contract.py says what).

add_papers reads the stored rows of a whole batch in one statement, decides in Python what
each paper adds (as the SQLite Store does row by row), and writes the new rows, the updated
ones and the follow-ups with one pipelined statement each. Two add_papers take turns
(the advisory lock "papers", per schema): what is new depends on what was read.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Callable, Collection

from psycopg.types.json import Jsonb

from bot.models import Paper, PaperSnapshot, PreviewCandidates, UnmatchedPaper
from bot.query import parse_query

from ..followups import FOLLOWUP_WINDOW, StoredState, paper_events
from . import paper_words
from .db import Database, from_db, utc

SEARCH_WINDOW = 5000

# The columns a Paper is read from, in _paper's order ("p." where joined).
_COLUMNS = ("id", "title", "summary", "authors", "categories", "sources", "published", "listed_on", "upvotes",
            "thumbnail", "github", "project_page", "ai_summary", "organization", "is_update", "comments", "version")
COLUMNS = ", ".join(_COLUMNS)
P_COLUMNS = ", ".join(f"p.{c}" for c in _COLUMNS)
# ORDER BY's tie on id: byte order, whatever the database's collation (SQLite compares bytes).
NEWEST = 'first_seen DESC, id COLLATE "C"'

# Fields a later listing may fill in (Hugging Face adds these to a paper arXiv announced).
_ENRICH = ("upvotes", "thumbnail", "github", "project_page", "ai_summary", "organization", "comments")

_INSERT = """INSERT INTO papers (id, title, summary, authors, categories, sources, published, listed_on, upvotes,
                 thumbnail, github, project_page, ai_summary, organization, is_update, first_seen, updated_at,
                 listed, comments, version, words, words_partial)
             VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                     %s::tsvector, %s)"""
_UPDATE = """UPDATE papers SET sources = %s, upvotes = %s, thumbnail = %s, github = %s, project_page = %s,
                 ai_summary = %s, organization = %s, comments = %s, version = %s, categories = %s, listed = %s,
                 first_seen = %s, updated_at = %s,
                 words = coalesce(%s::tsvector, words), words_partial = coalesce(%s, words_partial)
             WHERE id = %s"""
# One follow-up per event and card that posted the paper alone (storage/followups.py says which).
_FOLLOWUP = """INSERT INTO followups (delivery_id, kind, value, url, status, error, next_attempt_at, created_at)
               SELECT d.id, %s::text, %s::integer, %s::text, %s::text, %s::text, %s::timestamptz, %s::timestamptz
                 FROM deliveries d
                WHERE d.paper_id = %s AND NOT d.in_digest
                  AND (d.status = 'sending' OR (d.status = 'sent' AND d.sent_at >= %s
                       AND coalesce(d.message_id, '') <> ''
                       AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.channel = d.channel
                                          AND o.message_id = d.message_id AND o.id <> d.id)))
                  AND coalesce((SELECT enabled FROM channel_followups c WHERE c.channel = d.channel), true)
               ON CONFLICT (delivery_id, kind, value) DO NOTHING"""


@dataclass
class _Stored:
    """A stored row as add_papers merges a listing into it."""

    sources: list[str]
    listed: bool
    first_seen: datetime
    categories: list[str]
    values: dict[str, Any]  # _ENRICH and version
    title: str
    summary: str
    authors: list[str]
    inserted: bool = False  # a row this call inserts
    reindex: bool = False  # its words change (categories filled in, another organization)


class PapersMixin:
    db: Database
    _reader: Callable[[], AbstractContextManager[Database]]  # PgStore's: the calling thread's connection

    def add_papers(self, papers: list[Paper], now: datetime, *, listed: bool = True) -> list[Paper]:
        new: list[Paper] = []
        changed: list[tuple[StoredState, Paper]] = []
        stamp = utc(now)
        with self.db.transaction():
            self.db.lock("papers")  # what is new is decided from what was read: one add_papers at a time
            rows = self.db.all(
                """SELECT id, sources, listed, first_seen, categories, upvotes, thumbnail, github, project_page,
                          ai_summary, organization, comments, version, title, summary, authors
                     FROM papers WHERE id = ANY(%s)""",
                [list({p.id for p in papers})]) if papers else []
            stored: dict[str, _Stored] = {}
            for found in rows:
                values = dict(zip((*_ENRICH, "version"), found[5:13], strict=True))
                stored[found[0]] = _Stored(list(filter(None, found[1].split(","))), found[2], found[3],
                                           list(found[4]), values, found[13], found[14], list(found[15]))
            for paper in papers:
                row = stored.get(paper.id)
                if row is None:
                    stored[paper.id] = _Stored(
                        [paper.source], listed, stamp, list(paper.categories),
                        {**{k: getattr(paper, k) for k in _ENRICH}, "version": paper.version},
                        paper.title, paper.summary, list(paper.authors), inserted=True)
                    if listed:
                        new.append(paper)
                    continue
                before = StoredState(github=row.values["github"], version=row.values["version"],
                                     upvotes=row.values["upvotes"])
                if listed and not row.listed:  # first listed now, after a lookup stored it
                    row.listed, row.first_seen = True, stamp
                    new.append(paper)
                row.sources = sorted(set(row.sources) | {paper.source})
                for name in _ENRICH:
                    value = getattr(paper, name)
                    if value is not None:
                        row.reindex = row.reindex or (name == "organization" and value != row.values[name])
                        row.values[name] = value
                if paper.categories and not row.categories:
                    row.categories, row.reindex = list(paper.categories), True
                if paper.version is not None and paper.version > (row.values["version"] or 0):
                    row.values["version"] = paper.version  # versions only go up
                changed.append((before, paper))
            self._write_papers(papers, stored, stamp)
            self._queue_followups(changed, now)
        return new

    def _write_papers(self, papers: list[Paper], stored: dict[str, _Stored], stamp: datetime) -> None:
        inserts, updates = [], []
        first = {p.id: p for p in reversed(papers)}  # a new row's fixed fields: its first listing's
        for paper_id, row in stored.items():
            if row.inserted:
                paper = first[paper_id]
                text, partial_words = paper_words.document(row.title, row.summary, row.authors, row.categories,
                                                   row.values["organization"])
                inserts.append([
                    paper_id, row.title, row.summary, Jsonb(row.authors), Jsonb(row.categories),
                    ",".join(row.sources), utc(paper.published) if paper.published else None, paper.listed_on,
                    *(row.values[k] for k in ("upvotes", "thumbnail", "github", "project_page", "ai_summary",
                                              "organization")),
                    paper.is_update, row.first_seen, stamp, row.listed, row.values["comments"],
                    row.values["version"], text, partial_words])
            elif paper_id in first:
                words: str | None = None
                partial: bool | None = None
                if row.reindex:
                    words, partial = paper_words.document(row.title, row.summary, row.authors, row.categories,
                                                          row.values["organization"])
                updates.append([
                    ",".join(row.sources), *(row.values[k] for k in _ENRICH[:-1]), row.values["comments"],
                    row.values["version"], Jsonb(row.categories), row.listed, row.first_seen, stamp,
                    words, partial, paper_id])
        if inserts:
            self.db.executemany(_INSERT, inserts)
        if updates:
            self.db.executemany(_UPDATE, updates)

    def _queue_followups(self, changes: list[tuple[StoredState, Paper]], now: datetime) -> None:
        """Inside add_papers' transaction: a reply per event and card (storage/followups.py)."""
        stamp, since = utc(now), utc(now - FOLLOWUP_WINDOW)
        rows = []
        for before, paper in changes:
            for event in paper_events(before, paper):
                rows.append([event.kind, event.value, event.url, "skipped" if event.superseded else "pending",
                             "superseded by a higher threshold" if event.superseded else None, stamp, stamp,
                             paper.id, since])
        if rows:
            self.db.executemany(_FOLLOWUP, rows)

    def paper_snapshot(self, paper_ids: list[str]) -> list[PaperSnapshot]:
        if not paper_ids:
            return []
        rows = self.db.all("SELECT id, upvotes, organization, first_seen, categories FROM papers"
                           " WHERE listed AND id = ANY(%s)", [list(paper_ids)])
        return [PaperSnapshot(row[0], row[1], row[2], _aware(row[3]), tuple(row[4])) for row in rows]

    def mark_unmatched(self, papers: list[UnmatchedPaper]) -> None:
        if not papers:
            return
        with self.db.transaction():  # in order: `seq` keeps the order written
            self.db.executemany(
                """INSERT INTO unmatched_papers (paper_id, since, source, upto) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (paper_id) DO NOTHING""",
                [(u.paper.id, utc(u.since), u.paper.source or None, u.upto) for u in papers])

    def unmatched_papers(self, limit: int, skip: Collection[str] = ()) -> list[UnmatchedPaper]:
        rows = self.db.all(
            f"""SELECT {P_COLUMNS}, u.since, u.source, u.upto FROM unmatched_papers u
                  JOIN papers p ON p.id = u.paper_id WHERE NOT (u.paper_id = ANY(%s)) ORDER BY u.seq LIMIT %s""",
            [list(skip), limit])
        found = []
        for row in rows:
            since, source, upto = row[len(_COLUMNS):]
            # Matched as the listing that brought it showed it (see storage/papers.py).
            found.append(UnmatchedPaper(_paper(row, source), _aware(since), upto))
        return found

    def settle_unmatched(self, paper_ids: list[str]) -> None:
        if paper_ids:
            self.db.execute("DELETE FROM unmatched_papers WHERE paper_id = ANY(%s)", [list(paper_ids)])

    def get_paper(self, paper_id: str) -> Paper | None:
        row = self.db.one(f"SELECT {COLUMNS} FROM papers WHERE id = %s", [paper_id])
        return _paper(row) if row else None

    def papers_listed_since(self, since: datetime, limit: int) -> list[Paper]:
        return self._papers(f"SELECT {COLUMNS} FROM papers WHERE listed AND first_seen >= %s"
                            f" ORDER BY {NEWEST} LIMIT %s", [utc(since), limit])

    def index_paper_words(self, stop: Callable[[], bool] | None = None, *, backlog: bool = False) -> int:
        """Nothing to catch up on: add_papers writes each paper's words with it (paper_words.py)."""
        return 0

    def preview_candidates(self, query: str, since: datetime, limit: int | None = None) -> PreviewCandidates:
        narrowing = paper_words.narrowing(parse_query(query))
        start = utc(since)
        with self._reader() as db:
            # One statement, one snapshot: the window's size and whether it holds a paper
            # whose words the index could not hold (then a candidate, whatever the query).
            stored, partial = db.one(
                """SELECT (SELECT count(*) FROM papers WHERE listed AND first_seen >= %s),
                          EXISTS (SELECT 1 FROM papers WHERE words_partial AND listed AND first_seen >= %s)""",
                [start, start]) or (0, False)
            conditions = ["listed", "NOT is_update", "first_seen >= %s"]
            params: list[object] = [start]
            exact = narrowing.exact
            if narrowing.where is not None:
                if narrowing.words and partial:
                    conditions.append(f"({narrowing.where} OR words_partial)")
                    exact = False
                else:
                    conditions.append(narrowing.where)
                params += narrowing.params
            where = " AND ".join(conditions)
            if exact and limit is not None:
                # Decided in SQL: the matches found (narrow rows) and counted, and only the
                # newest `limit` read in full. One statement: the count and the rows agree.
                rows = _unprepared(
                    db, f"""WITH found AS MATERIALIZED (SELECT id, first_seen FROM papers WHERE {where}),
                             newest AS (SELECT id FROM found ORDER BY {NEWEST} LIMIT %s)
                        SELECT (SELECT count(*) FROM found), {P_COLUMNS}
                          FROM (SELECT 1) AS one LEFT JOIN papers p ON p.id IN (SELECT id FROM newest)
                         ORDER BY p.first_seen DESC, p.id COLLATE "C" """,
                    [*params, max(limit, 0)])
                count = rows[0][0]
                papers = [_paper(row[1:]) for row in rows if row[1] is not None]
            else:
                papers = [_paper(row) for row in _unprepared(
                    db, f"SELECT {COLUMNS} FROM papers WHERE {where} ORDER BY {NEWEST}", params)]
                count = len(papers)
        return PreviewCandidates(papers, int(stored), int(count), exact)

    def search_papers(self, words: list[str], limit: int, window: int = SEARCH_WINDOW) -> list[Paper]:
        """Full-text search over `fts` (English stemming; title, then abstract, then authors
        weigh most): papers with every word, else any word, best first (ts_rank). Only the
        `window` most recently stored matches are ranked, as SQLite does.

        The matches are found by the GIN index alone (`found`, MATERIALIZED: a bitmap scan
        reads each match's id and first_seen, never its `fts`), the newest `window` kept,
        and only those are ranked, each `fts` read once; whole rows are read for the best
        `limit` alone. Left to itself the planner walked first_seen backwards for a frequent
        word, reading the `fts` of every paper on the way to test it and again to rank it
        (docs/benchmarks.md)."""
        if not words:
            return []
        with self._reader() as db:
            for joiner in (" && ", " || "):
                # One plainto_tsquery per word: the text is a parameter, never tsquery syntax;
                # a prefix (StoreContract) one to_tsquery of `word:*`, its word letters and digits.
                query = joiner.join("to_tsquery('english', %s)" if w.endswith("*") else "plainto_tsquery('english', %s)"
                                    for w in words)
                rows = _unprepared(
                    db, f"""WITH q AS MATERIALIZED (SELECT {query} AS q),
                             found AS MATERIALIZED (SELECT p.id, p.first_seen FROM papers p, q WHERE p.fts @@ q.q),
                             newest AS (SELECT id FROM found ORDER BY {NEWEST} LIMIT %s),
                             hits AS (SELECT p.id, p.first_seen, ts_rank(p.fts, q.q) AS rank FROM papers p, q
                                       WHERE p.id IN (SELECT id FROM newest)
                                       ORDER BY rank DESC, p.first_seen DESC, p.id COLLATE "C" LIMIT %s)
                        SELECT {P_COLUMNS} FROM hits JOIN papers p ON p.id = hits.id
                         ORDER BY hits.rank DESC, hits.first_seen DESC, hits.id COLLATE "C" """,
                    [*map(_ts_word, words), max(window, 1), limit])
                if rows or len(words) == 1:
                    return [_paper(row) for row in rows]
        return []

    def trending_papers(self, since: date, limit: int) -> list[Paper]:
        return self._papers(f"""SELECT {COLUMNS} FROM papers WHERE upvotes IS NOT NULL AND listed_on >= %s
                                 ORDER BY upvotes DESC, id COLLATE "C" LIMIT %s""", [since, limit])

    def recent_papers(self, limit: int) -> list[Paper]:
        return self._papers(f"SELECT {COLUMNS} FROM papers ORDER BY {NEWEST} LIMIT %s", [limit])

    def count_papers(self) -> int:
        return int(self.db.scalar("SELECT count(*) FROM papers"))

    def _papers(self, sql: str, params: list[object]) -> list[Paper]:
        return [_paper(row) for row in self.db.all(sql, params)]


def _unprepared(db: Database, sql: str, params: list[object]) -> list[tuple]:
    """Rows of a statement planned for its parameters each time: psycopg prepares a statement
    run five times, and PostgreSQL's generic plan for `words @@ $1` does not know how rare the
    words are (it walked first_seen backwards through every paper: seconds at 100,000)."""
    rows: list[tuple] = db.conn.execute(sql, params, prepare=False).fetchall()
    return rows


def _aware(moment: datetime | None) -> datetime:
    found = from_db(moment)
    assert found is not None
    return found


def _paper(row: tuple, source: str | None = None) -> Paper:
    """The Paper of a row of papers; `source` (when given) instead of its first source."""
    return Paper(
        id=row[0], title=row[1], summary=row[2], authors=tuple(row[3]), categories=tuple(row[4]),
        source=source or row[5].split(",")[0], published=from_db(row[6]), listed_on=row[7], upvotes=row[8],
        thumbnail=row[9], github=row[10], project_page=row[11], ai_summary=row[12], organization=row[13],
        is_update=bool(row[14]), comments=row[15], version=row[16])


def _ts_word(word: str) -> str:
    """A search word as its tsquery function takes it: `word:*` for a prefix (`word*`), the
    word's letters and digits alone (nothing of tsquery's syntax can pass); else as it is."""
    if not word.endswith("*"):
        return word
    letters = "".join(c for c in word[:-1] if c.isalnum())
    return f"{letters}:*" if letters else ""
