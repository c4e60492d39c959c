"""Papers: insert-or-enrich, lookup."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import date, datetime
from typing import Callable, Collection, Iterator
from urllib.request import pathname2url

from sqlite_utils import Database

from bot.errors import StorageBusy
from bot.models import Paper, PaperSnapshot, PreviewCandidates, UnmatchedPaper
from bot.query import parse_query

from . import paper_words
from .db import immediate, iso, parse_day, parse_iso, storage_error
from .followups import FollowUpsMixin, StoredState

SEARCH_WINDOW = 5000
PREVIEW_CATCH_UP = 1000  # papers a preview indexes itself, at most; the rest is read unnarrowed

# Fields a later listing may fill in (Hugging Face adds these to a paper arXiv announced).
_ENRICH = ("upvotes", "thumbnail", "github", "project_page", "ai_summary", "organization", "comments")
_INSERT_PAPERS = """INSERT INTO papers (id, title, summary, authors, categories, sources, published, listed_on, upvotes,
                        thumbnail, github, project_page, ai_summary, organization, is_update, first_seen,
                        updated_at, listed, comments, version) VALUES """
_PAPER_VALUES = "(" + ", ".join("?" * 20) + ")"
INSERT_ROWS = 200  # new papers an INSERT statement, at most (20 values each)


class PapersMixin(FollowUpsMixin):
    db: Database
    path: str
    busy_timeout: float
    owner_thread: int  # the thread that opened self.db: SQLite connections are bound to theirs

    def reads_off_loop(self) -> bool:
        return self.path != ":memory:" and not self.path.startswith("file:")

    @contextmanager
    def _reader(self) -> Iterator[Database]:
        """The connection for this thread: self.db on its own thread, else one of its own,
        opened for the call (a file database only: an in-memory one has one connection)."""
        if threading.get_ident() == self.owner_thread or not self.reads_off_loop():
            yield self.db
            return
        try:
            # mode=rw: never creates the file. A database deleted under the bot must stay
            # missing (Store.check_file stops the bot), not come back empty from a reader.
            conn = sqlite3.connect(f"file:{pathname2url(os.path.abspath(self.path))}?mode=rw", uri=True,
                                   timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from None
        try:
            yield Database(conn)
        finally:
            conn.close()

    def add_papers(self, papers: list[Paper], now: datetime, *, listed: bool = True) -> list[Paper]:
        """Store papers; return those no source had listed before (in input order).

        A paper already listed (by another source, or an earlier poll) is enriched with the
        fields it lacked and its upvotes refreshed, but is not new. `listed=False` stores
        papers fetched for a lookup: a later listing of them still counts as new.
        """
        new: list[Paper] = []
        changed: list[tuple[StoredState, Paper]] = []  # papers stored before, and how they were
        stamp = iso(now)
        with immediate(self.db):
            # The stored rows of the batch, read at once; a paper listed twice in it reads its
            # row again (inserted or enriched by its first listing).
            stored = self._stored_rows([p.id for p in papers])
            inserting: list[list[object]] = []  # new rows, inserted together (below)
            touched: set[str] = set()
            for paper in papers:
                if paper.id in touched:
                    self._insert_papers(inserting)
                    row = self.db.execute("SELECT sources, listed, github, version, upvotes FROM papers WHERE id = ?",
                                          [paper.id]).fetchone()
                else:
                    row = stored.get(paper.id)
                touched.add(paper.id)
                if row is None:
                    inserting.append([
                        paper.id, paper.title, paper.summary, json.dumps(paper.authors),
                        json.dumps(paper.categories), paper.source,
                        iso(paper.published) if paper.published else None,
                        paper.listed_on.isoformat() if paper.listed_on else None,
                        paper.upvotes, paper.thumbnail, paper.github, paper.project_page,
                        paper.ai_summary, paper.organization, int(paper.is_update), stamp, stamp,
                        int(listed), paper.comments, paper.version,
                    ])
                    if listed:
                        new.append(paper)
                    continue
                if listed and not row[1]:  # first listed now, after a lookup stored it
                    self.db.execute("UPDATE papers SET listed = 1, first_seen = ? WHERE id = ?", [stamp, paper.id])
                    new.append(paper)
                sources = sorted(set(filter(None, row[0].split(","))) | {paper.source})
                updates = {k: getattr(paper, k) for k in _ENRICH if getattr(paper, k) is not None}
                if paper.categories and self.db.execute(  # a paper stored without (Hugging Face's) gets arXiv's
                        "UPDATE papers SET categories = ? WHERE id = ? AND categories = '[]'",
                        [json.dumps(paper.categories), paper.id]).rowcount:
                    paper_words.reindex(self.db, paper.id)  # preview's `cat:` terms find them
                if paper.version is not None and paper.version > (row[3] or 0):
                    updates["version"] = paper.version  # versions only go up
                assignments = ", ".join(f"{k} = ?" for k in updates)
                self.db.execute(
                    f"UPDATE papers SET {assignments}{', ' if updates else ''}sources = ?, updated_at = ? WHERE id = ?",
                    [*updates.values(), ",".join(sources), stamp, paper.id],
                )
                changed.append((StoredState(github=row[2], version=row[3], upvotes=row[4]), paper))
            self._insert_papers(inserting)
            self._queue_followups(changed, now)  # follow-ups in the thread (storage/followups.py)
        return new

    def _stored_rows(self, paper_ids: list[str]) -> dict[str, tuple]:
        """add_papers' view of the stored papers among `paper_ids`: sources, listed, github,
        version, upvotes, by id."""
        found: dict[str, tuple] = {}
        for start in range(0, len(paper_ids), 500):
            chunk = paper_ids[start:start + 500]
            found.update((row[0], row[1:]) for row in self.db.execute(
                "SELECT id, sources, listed, github, version, upvotes FROM papers"
                f" WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
        return found

    def _insert_papers(self, rows: list[list[object]]) -> None:
        """Insert new papers' rows (and empty the list), in order, INSERT_ROWS a statement.

        One statement for many rows, not one a row: the full-text index `papers_fts`, kept
        by a trigger, writes what it holds at the end of each statement (FTS5 flushes at
        every statement's savepoint), so a statement a row made a segment a paper and
        merged them again and again (measured: twice the CPU of add_papers, 2,000 papers in
        batches of 50)."""
        # A build of SQLite may allow fewer values a statement than today's default (32,766).
        size = max(1, min(INSERT_ROWS, self.db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 20))
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            self.db.execute(_INSERT_PAPERS + ", ".join([_PAPER_VALUES] * len(chunk)),
                            [value for row in chunk for value in row])
        rows.clear()

    def paper_snapshot(self, paper_ids: list[str]) -> list[PaperSnapshot]:
        """The listed papers stored among `paper_ids` (upvotes, organization, first seen,
        categories), in no order."""
        found: list[PaperSnapshot] = []
        for start in range(0, len(paper_ids), 500):
            chunk = paper_ids[start:start + 500]
            rows = self.db.execute(
                "SELECT id, upvotes, organization, first_seen, categories FROM papers"
                f" WHERE listed = 1 AND id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found += [PaperSnapshot(row[0], row[1], row[2], datetime.fromisoformat(row[3]), tuple(json.loads(row[4])))
                      for row in rows]
        return found

    def mark_unmatched(self, papers: list[UnmatchedPaper]) -> None:
        """Write down stored papers still to be matched (a paper already down keeps its `since`)."""
        with immediate(self.db):
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO unmatched_papers (paper_id, since, source, upto) VALUES (?, ?, ?, ?)",
                [(u.paper.id, iso(u.since), u.paper.source or None, u.upto) for u in papers],
            )

    def unmatched_papers(self, limit: int, skip: Collection[str] = ()) -> list[UnmatchedPaper]:
        """Papers written down by `mark_unmatched` and not settled yet, in the order written,
        but those in `skip` (the poller's under way: not read again, each time)."""
        cursor = self.db.execute(
            """SELECT papers.*, u.since AS unmatched_since, u.source AS unmatched_source, u.upto AS unmatched_upto
                 FROM unmatched_papers u
                 JOIN papers ON papers.id = u.paper_id
                WHERE u.paper_id NOT IN (SELECT value FROM json_each(?)) ORDER BY u.rowid LIMIT ?""",
            [json.dumps(list(skip)), limit],
        )
        columns = [d[0] for d in cursor.description]
        found = []
        for row in cursor:
            values = dict(zip(columns, row, strict=True))
            # Matched as the listing that brought it showed it: a paper stored from arXiv and
            # then listed (or re-checked) on Hugging Face matches `source:huggingface`.
            found.append(UnmatchedPaper(_paper(values, values["unmatched_source"]),
                                        datetime.fromisoformat(values["unmatched_since"]), values["unmatched_upto"]))
        return found

    def settle_unmatched(self, paper_ids: list[str]) -> None:
        """These papers are matched and their deliveries queued: take them off the list."""
        with immediate(self.db):  # one statement, one step (see enqueue_many)
            self.db.execute("DELETE FROM unmatched_papers WHERE paper_id IN (SELECT value FROM json_each(?))",
                            [json.dumps(paper_ids)])

    def get_paper(self, paper_id: str) -> Paper | None:
        found = self._papers("SELECT * FROM papers WHERE id = ?", [paper_id])
        return found[0] if found else None

    def papers_listed_since(self, since: datetime, limit: int) -> list[Paper]:
        """Listed papers stored since `since`, newest first."""
        return self._papers(
            "SELECT * FROM papers WHERE listed = 1 AND first_seen >= ? ORDER BY first_seen DESC, id LIMIT ?",
            [iso(since), limit],
        )

    def index_paper_words(self, stop: Callable[[], bool] | None = None, *, backlog: bool = False) -> int:
        with self._reader() as db:
            done = paper_words.index_new(db, stop=stop)
            if backlog:
                done += paper_words.index_backlog(db, stop=stop)
            return done

    def preview_candidates(self, query: str, since: datetime, limit: int | None = None) -> PreviewCandidates:
        narrowing = paper_words.narrowing(parse_query(query))
        with self._reader() as db:
            return self._preview_candidates(db, narrowing, since, limit)

    def _preview_candidates(self, db: Database, narrowing: paper_words.Narrowing, since: datetime,
                            limit: int | None) -> PreviewCandidates:
        if narrowing.match is not None:
            try:  # the few papers stored since the last poll's catch-up; never a long backlog
                paper_words.index_new(db, limit=PREVIEW_CATCH_UP)
            except StorageBusy:  # locked past the timeout: the rows not indexed yet are read as they are
                pass
        conn = db.conn
        paper_words.register(conn)
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN")  # one snapshot: the index's marks and the rows agree
        try:
            stored = _listed_since(conn, iso(since))
            conditions = ["listed = 1", "is_update = 0", "first_seen >= ?", *narrowing.where]
            params: list[object] = [iso(since), *narrowing.params]
            exact = narrowing.exact
            if narrowing.match is not None:
                indexed, backlog = conn.execute("SELECT indexed, backlog FROM paper_words_state").fetchone()
                unindexed, unindexed_params = [], []
                if conn.execute("SELECT 1 FROM papers WHERE rowid > ? LIMIT 1", [indexed]).fetchone():
                    unindexed.append("rowid > ?")  # stored since the last catch-up (the write lock was busy)
                    unindexed_params.append(indexed)
                if backlog > 0 and conn.execute(
                        "SELECT 1 FROM papers WHERE listed = 1 AND first_seen >= ? AND rowid <= ? LIMIT 1",
                        [iso(since), backlog]).fetchone():
                    unindexed.append("rowid <= ?")  # stored before the index, not reached yet by its catch-up
                    unindexed_params.append(backlog)
                words = "rowid IN (SELECT rowid FROM paper_words WHERE paper_words MATCH ?)"
                if unindexed:
                    # Read unnarrowed, and left to the evaluator.
                    exact = False
                    conditions.append(f"({' OR '.join(unindexed)} OR {words})")
                    params += [*unindexed_params, narrowing.match]
                else:
                    conditions.append(words)
                    params.append(narrowing.match)
                conditions[2] = "+first_seen >= ?"  # the word index narrows more than the date
            where = " AND ".join(conditions)
            if exact and limit is not None:
                # Decided in SQL: the matches are looked up in paper_window (narrow rows: listed
                # papers, no replacements), counted, and only the newest `limit` read in full.
                window = ["first_seen >= ?", *narrowing.where]
                window_params: list[object] = [iso(since), *narrowing.params]
                if narrowing.match is not None:
                    window.append("rowid IN (SELECT rowid FROM paper_words WHERE paper_words MATCH ?)")
                    window_params.append(narrowing.match)
                found = conn.execute(f"SELECT first_seen, id, rowid FROM paper_window WHERE {' AND '.join(window)}",
                                     window_params).fetchall()
                found.sort(key=lambda row: row[1])
                found.sort(key=lambda row: row[0], reverse=True)  # newest first, ties by id (stable)
                newest = [row[2] for row in found[:limit]]
                count = len(found)
                papers = self._papers(
                    f"SELECT * FROM papers WHERE rowid IN ({', '.join('?' * len(newest))})"
                    " ORDER BY first_seen DESC, id", newest, db) if newest else []
            else:
                papers = self._papers(f"SELECT * FROM papers WHERE {where} ORDER BY first_seen DESC, id", params, db)
                count = len(papers)
        finally:
            if began and conn.in_transaction:
                conn.execute("COMMIT")
        return PreviewCandidates(papers, stored, count, exact)

    def search_papers(self, words: list[str], limit: int, window: int = SEARCH_WINDOW) -> list[Paper]:
        """Full-text search (FTS5, bm25): papers with every word, else any word.

        Ranking scores every match, so for frequent words only the `window` most recent
        matches are ranked (FTS5 walks its doclists by rowid cheaply; rowids grow with
        time). That keeps a search fast at a million papers and favours new work.
        """
        if not words:
            return []
        # Quoted: user text is never FTS5 syntax; a trailing * (StoreContract) is FTS5's prefix.
        quoted = ['"' + w.rstrip("*").replace('"', '""') + '"' + ("*" if w.endswith("*") else "") for w in words]
        with self._reader() as db:
            return self._search(db, quoted, limit, window)

    def _search(self, db: Database, quoted: list[str], limit: int, window: int) -> list[Paper]:
        for expression in (" ".join(quoted), " OR ".join(quoted)):
            found = self._papers(
                """SELECT papers.* FROM (
                       SELECT rowid, rank FROM papers_fts
                        WHERE papers_fts MATCH :q AND rowid >= coalesce(
                            (SELECT rowid FROM papers_fts WHERE papers_fts MATCH :q
                              ORDER BY rowid DESC LIMIT 1 OFFSET :window), 0)
                        ORDER BY rank LIMIT :limit) AS hits
                   JOIN papers ON papers.rowid = hits.rowid ORDER BY hits.rank""",
                {"q": expression, "window": window - 1, "limit": limit},
                db,
            )
            if found or len(quoted) == 1:
                return found
        return []

    def trending_papers(self, since: date, limit: int) -> list[Paper]:
        return self._papers(
            """SELECT * FROM papers WHERE upvotes IS NOT NULL AND listed_on >= ?
                ORDER BY upvotes DESC, id LIMIT ?""",
            [since.isoformat(), limit],
        )

    def _papers(self, sql: str, params: list | dict, db: Database | None = None) -> list[Paper]:
        cursor = (db or self.db).execute(sql, params)
        columns = [d[0] for d in cursor.description]
        return [_paper(dict(zip(columns, row, strict=True))) for row in cursor]

    def recent_papers(self, limit: int) -> list[Paper]:
        """The papers stored last, newest first."""
        return self._papers("SELECT * FROM papers ORDER BY first_seen DESC, id LIMIT ?", [limit])

    def count_papers(self) -> int:
        return self.db.execute("SELECT count(*) FROM papers").fetchone()[0]


def _paper(row: dict, source: str | None = None) -> Paper:
    """The Paper of a row of papers; `source` (when given) instead of its first source."""
    return Paper(
        id=row["id"],
        title=row["title"],
        summary=row["summary"],
        authors=tuple(json.loads(row["authors"])),
        categories=tuple(json.loads(row["categories"])),
        source=source or row["sources"].split(",")[0],
        published=parse_iso(row["published"]),
        listed_on=parse_day(row["listed_on"]),
        upvotes=row["upvotes"],
        thumbnail=row["thumbnail"],
        github=row["github"],
        project_page=row["project_page"],
        ai_summary=row["ai_summary"],
        organization=row["organization"],
        is_update=bool(row["is_update"]),
        comments=row.get("comments"),
        version=row.get("version"),
    )


def _listed_since(conn: sqlite3.Connection, since: str) -> int:
    """The listed papers first stored at or after `since` (an iso() stamp): whole days from
    papers_listed_days (kept by triggers, m022), the first day's part counted."""
    day = since[:10]
    whole = conn.execute("SELECT coalesce(sum(listed), 0) FROM papers_listed_days WHERE day > ?", [day]).fetchone()[0]
    # '~' sorts after every character of a stamp: the rest of that day
    part = conn.execute("SELECT count(*) FROM papers WHERE listed = 1 AND first_seen >= ? AND first_seen < ?",
                        [since, day + "~"]).fetchone()[0]
    return int(whole) + int(part)
