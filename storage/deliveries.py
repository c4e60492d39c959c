"""The outbox: deliveries are written before anything is sent, one row per paper x channel."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlite_utils import Database

from bot.models import (
    BurstPlan,
    ChannelRef,
    Delivery,
    DueChannel,
    Match,
    MatchedBatch,
    OutboxCounts,
    Overflow,
    PaperMatches,
    SubscriptionRef,
    terms_strength,
)

from .db import alone, immediate, iso, parse_iso, write
from .migrations import MATCHED_OR_EMPTY
from .subscriptions import NEWEST_VERSION

_STATUSES = {f.name for f in fields(OutboxCounts)}
# The columns `_delivery` reads, in its order.
_COLUMNS = "id, paper_id, channel, matched, attempts, in_digest, claimed_at"
_D_COLUMNS = ", ".join(f"d.{c.strip()}" for c in _COLUMNS.split(","))

# How a channel's deliveries are ranked, best first (burst cards, digests), as an ORDER BY over
# `deliveries d JOIN papers p`: Hugging Face upvotes (unknown last); then how strongly the
# channel's queries matched: terms found in the title, then distinct terms matched (from
# `deliveries.strength`, which `match_strength` writes with the row; rows queued before m017 work
# it out of `matched` here); then the newest paper; then the oldest row. Computed when
# planning (upvotes change), over the channel's own undecided rows only.
MATCH_STRENGTH = """coalesce(d.strength, CASE WHEN json_valid(d.matched) THEN (
    SELECT 1000 * min(count(DISTINCT CASE WHEN t.value LIKE '% in title' THEN t.value END), 999)
           + min(count(DISTINCT t.value), 999)
      FROM json_each(d.matched) m, json_each(m.value, '$.terms') t
     WHERE m.type = 'object' AND t.type = 'text') ELSE 0 END)"""
RANKING = (f"p.upvotes IS NULL, p.upvotes DESC, {MATCH_STRENGTH} DESC, "
           "coalesce(p.published, p.listed_on) IS NULL, coalesce(p.published, p.listed_on) DESC, d.id")


class DeliveriesMixin:
    """Statuses: pending -> sending -> sent | failed; or 'overflow': settled without being
    posted, because a burst had more than a channel's cards and one digest hold (the digest
    says how many; message_id names it once it has)."""

    db: Database
    if TYPE_CHECKING:
        def live_sender_id(self) -> str: ...  # RolesMixin's: this store's id, its liveness lock held
        def _reader(self) -> AbstractContextManager[Database]: ...  # PapersMixin's: this thread's connection
        def _thread_db(self) -> AbstractContextManager[Database]: ...  # Store's: this thread's, to write

    def enqueue(self, paper_id: str, matches: list[Match], now: datetime) -> int:
        """Queue `paper_id` for every channel among `matches`; returns how many rows were new.

        Several subscriptions of one channel matching one paper make one delivery that
        keeps them all (`Delivery.matched`: their ids, queries and the terms that matched).
        A channel that already has this paper gets nothing new.
        """
        return self.enqueue_many([PaperMatches(paper_id, tuple(matches))], now)

    def enqueue_many(self, items: list[PaperMatches], now: datetime) -> int:
        """`enqueue` for many papers in one transaction.

        Everything goes to SQLite as one JSON text, and each statement is one step over all
        rows: the poller calls this from its writer thread while its worker matches, and a
        statement run row by row (executemany) gave the GIL up and waited for it back at every
        row (each wait up to the interpreter's 5 ms switch interval while the matcher runs).
        """
        rows: dict[tuple[str, str], list[Match]] = {}
        keys: dict[ChannelRef, str] = {}
        for item in items:
            for match in item.matches:
                key = keys.get(match.channel)
                if key is None:
                    key = keys[match.channel] = match.channel.key
                rows.setdefault((item.paper_id, key), []).append(match)
        if not rows:
            return 0
        stamp = iso(now)
        payload = json.dumps([[paper_id, key, [[m.subscription_id, m.query, list(m.terms)] for m in ms],
                               match_strength(ms)] for (paper_id, key), ms in rows.items()])
        with immediate(self.db):  # as little as can be under the write lock
            return self.db.conn.execute(
                f"""INSERT OR IGNORE INTO deliveries (paper_id, channel, matched, strength, next_attempt_at, created_at)
                    SELECT json_extract(d.value, '$[0]'), json_extract(d.value, '$[1]'), ({_MATCHED_JSON}),
                           json_extract(d.value, '$[3]'), ?, ?
                      FROM json_each(?) d""",
                [stamp, stamp, payload],
            ).rowcount

    def for_poll_writes(self) -> None:
        # Before any transaction (the pragma does nothing inside one), and so before the
        # statements the connection keeps are prepared (changing it expires them all).
        self.db.execute("PRAGMA foreign_keys = OFF")

    def takes_made_deliveries(self) -> bool:
        return True

    def queue_matched(self, batch: MatchedBatch, now: datetime) -> int:
        """A poll's transaction: queue `batch`'s deliveries, due at `now`, and take its papers
        off the unmatched list (if it `settles`); returns how many deliveries are new.

        Only subscriptions that still exist and may receive the paper count (id up to its
        `upto`, or else created by its `since`), read under the write lock. A batch made
        at a subscription version (`MatchedBatch.split`) that is still the newest, under
        the lock, holds its deliveries as they are written (`deliveries`: subscriptions
        unchanged since, the worker kept those up to each paper's `upto`): they go in by
        one INSERT of bound values (`_insert_made`), the version's check in it; the papers
        without an `upto` (`recheck`) and any other batch take `_QUEUE_MATCHED`, which
        reads the batch's JSON and each subscription. A transaction that is that INSERT
        alone (not the group's last, nothing to recheck) is that one statement, without
        BEGIN and COMMIT (`alone`). Either way a few statements over the whole batch: the
        poller's writer thread runs them while its worker matches, and they hold the GIL
        only to start. A poll's transactions each hold a range of
        channels (`MatchedBatch.split`): that is what keeps its writes to the outbox's
        index by channel few (docs/benchmarks.md, "outbox").
        """
        conn = self.db.conn
        made: bool | None = None  # whether the made deliveries are in (None: not tried yet)
        if (batch.version is not None and batch.deliveries is not None and not batch.settles
                and batch.recheck == "[]" and len(batch.deliveries) <= 4 * _MADE_ROWS[-1]
                and not conn.in_transaction):
            # The INSERT is the whole transaction: alone, in one statement, not three.
            with alone(self.db):
                before = conn.total_changes
                made = _insert_made(conn, batch.deliveries, batch.version, iso(now))
            if made:
                return conn.total_changes - before
        with immediate(self.db):
            before = conn.total_changes  # rowcount is -1 for a statement that begins WITH
            if made is None:
                made = batch.version is not None and batch.deliveries is not None and _insert_made(
                    conn, batch.deliveries, batch.version, iso(now))
            if not made or batch.recheck != "[]":
                conn.execute(_QUEUE_MATCHED, {"papers": batch.papers, "now": iso(now),
                                              "matches": batch.recheck if made else batch.matches})
            queued = conn.total_changes - before  # (no trigger fires on an insert into deliveries)
            if batch.settles:
                conn.execute(
                    "DELETE FROM unmatched_papers WHERE paper_id IN "
                    "(SELECT json_extract(value, '$[0]') FROM json_each(?))", [batch.papers])
        return queued

    def due_channels(self, now: datetime) -> list[DueChannel]:
        """Channels in instant mode, not paused, with deliveries due (and how many), the
        channel waiting longest first. Each is then planned on its own (`plan_burst`), so no
        channel's backlog decides what another channel gets. Any thread (a connection of its
        own off the store's thread): each due row is counted. Counted per channel first, from
        the pending rows' entries of `deliveries_outbox (status, channel, next_attempt_at)`
        alone (in channel order: no row read, no sort; m025), then joined to the channels'
        settings (once a channel, not once a row)."""
        with self._reader() as db:
            rows = db.execute(
                """SELECT due.channel, due.n FROM (
                       SELECT channel, count(*) AS n, min(id) AS first FROM deliveries
                        WHERE status = 'pending' AND next_attempt_at <= ? GROUP BY channel) AS due
                     LEFT JOIN channels c ON c.channel = due.channel
                    WHERE coalesce(c.paused, 0) = 0 AND coalesce(c.mode, 'instant') = 'instant'
                    ORDER BY due.first""",
                [iso(now)],
            ).fetchall()
        return [DueChannel(ChannelRef.from_key(row[0]), row[1]) for row in rows]

    def plan_burst(self, channel: ChannelRef, now: datetime, cards: int, digest_max: int) -> BurstPlan:
        """Decide, once, how a channel's outstanding deliveries go out; return what is due now.

        Rows are taken best first (`RANKING`: most upvoted, then the strongest match, then
        the newest). A burst starts when the channel has no digest outstanding and more
        undecided rows than room for cards: the best fill the `cards` (rows already made
        cards and not yet sent count against them), the next `digest_max` make its one
        digest, anything further is settled as 'overflow': not posted, counted in that
        digest ("and N more matched"). Until that digest is sent the burst goes on: whatever
        arrives meanwhile joins the digest while it has room (best first), else the
        overflow, never the cards (once the digest is on its way, its count is written: what
        arrives then waits for the next burst). No decision is ever revisited, so rate
        limits may stretch a burst over many sweeps, and it still gives at most `cards`
        cards and one digest. A platform outage is one burst too. Returns the due cards and
        the due digest members, best first.

        Its cost follows the channel's own rows: every statement reads the channel's entries
        of a status in `deliveries_outbox` (status, channel, next_attempt_at), and only the
        undecided ones are ranked. Still ~2,000 rows written (on as many pages) when a big
        burst settles its overflow: any thread, on a connection of its own off the store's
        thread (`_thread_db`), one transaction holding the write lock from its first read.
        """
        key = channel.key
        with self._thread_db() as db, immediate(db):
            in_digest, digest_in_flight = db.execute(
                """SELECT count(*), coalesce(max(status = 'sending'), 0) FROM deliveries
                    WHERE channel = ? AND status IN ('pending', 'sending') AND in_digest = 1""",
                [key],
            ).fetchone()
            if digest_in_flight:
                return BurstPlan([], [])  # its "and N more" is written: what came since waits for the next burst
            undecided = f"""SELECT d.id FROM deliveries d JOIN papers p ON p.id = d.paper_id
                             WHERE d.channel = ? AND d.status = 'pending' AND d.in_digest = 0 AND d.card = 0
                             ORDER BY {RANKING} LIMIT ?"""
            digest_room = max(digest_max - in_digest, 0)
            if in_digest:  # a burst going on: its cards are decided; arrivals join the digest, or the overflow
                room, ranked = 0, db.execute(undecided, [key, digest_room]).fetchall()
            else:
                # Rows made cards before (not sent yet), and rows mid-send, are cards already.
                taken = db.execute(
                    """SELECT count(*) FROM deliveries WHERE channel = ? AND status IN ('pending', 'sending')
                          AND in_digest = 0 AND (card = 1 OR status = 'sending')""",
                    [key],
                ).fetchone()[0]
                room = max(cards - taken, 0)
                ranked = db.execute(undecided, [key, room + digest_room + 1]).fetchall()  # ranked once
            db.conn.executemany("UPDATE deliveries SET card = 1 WHERE id = ?", [r[:1] for r in ranked[:room]])
            if in_digest or len(ranked) > room:  # more than the cards hold: the digest, then the overflow
                db.conn.executemany("UPDATE deliveries SET in_digest = 1 WHERE id = ?",
                                    [r[:1] for r in ranked[room:room + digest_room]])
                db.execute(
                    """UPDATE deliveries SET status = 'overflow', error = NULL
                        WHERE channel = ? AND status = 'pending' AND in_digest = 0 AND card = 0""",
                    [key],
                )
            # A digest holds digest_max: anything past that (an outbox from before this rule) is overflow too.
            db.execute(
                f"""UPDATE deliveries SET status = 'overflow', error = NULL
                     WHERE channel = ? AND status = 'pending' AND id IN (
                       SELECT d.id FROM deliveries d JOIN papers p ON p.id = d.paper_id
                        WHERE d.channel = ? AND d.status IN ('pending', 'sending') AND d.in_digest = 1
                        ORDER BY d.status = 'pending', {RANKING} LIMIT -1 OFFSET ?)""",
                [key, key, digest_max],
            )
            rows = db.execute(
                f"""SELECT {_D_COLUMNS} FROM deliveries d JOIN papers p ON p.id = d.paper_id
                    WHERE d.channel = ? AND d.status = 'pending' AND (d.in_digest = 1 OR d.card = 1)
                      AND d.next_attempt_at <= ?
                    ORDER BY d.in_digest, {RANKING} LIMIT ?""",
                [key, iso(now), cards + digest_max],
            ).fetchall()
        due = [_delivery(r) for r in rows]
        return BurstPlan([d for d in due if not d.in_digest], [d for d in due if d.in_digest])

    def hold_back(self, channel: ChannelRef, keep: int) -> None:
        """A scheduled digest holds `keep` papers: settle the rest of what the channel is owed
        as 'overflow' (counted in that digest, not posted); the best `keep` stay (`RANKING`).
        Any thread, as plan_burst (a channel owed thousands rewrites as many rows)."""
        with self._thread_db() as db:
            write(
                db,
                f"""UPDATE deliveries SET status = 'overflow', error = NULL
                     WHERE channel = ? AND status = 'pending' AND id IN (
                       SELECT d.id FROM deliveries d JOIN papers p ON p.id = d.paper_id
                        WHERE d.channel = ? AND d.status = 'pending' ORDER BY {RANKING} LIMIT -1 OFFSET ?)""",
                [channel.key, channel.key, keep],
            )

    def unannounced_overflow(self, channel: ChannelRef) -> Overflow:
        """How many of the channel's overflow rows no digest has mentioned yet, and the highest
        id. Any thread (it reads each of those rows: thousands after a big burst)."""
        with self._thread_db() as db:
            row = db.execute(
                """SELECT count(*), coalesce(max(id), 0) FROM deliveries
                    WHERE channel = ? AND status = 'overflow' AND message_id IS NULL""",
                [channel.key],
            ).fetchone()
        return Overflow(row[0], row[1])

    def announce_overflow(self, channel: ChannelRef, up_to: int, message_id: str | None, now: datetime) -> None:
        """Record the digest that said "and N more" about these overflow rows. Any thread
        (it writes, as the other outcomes below: on the calling thread's connection)."""
        with self._thread_db() as db:
            write(
                db,
                """UPDATE deliveries SET message_id = ?, sent_at = ?
                    WHERE channel = ? AND status = 'overflow' AND message_id IS NULL AND id <= ?""",
                [message_id or "", iso(now), channel.key, up_to],
            )

    def pending_for_channel(self, channel: ChannelRef, limit: int = 1000) -> list[Delivery]:
        """Everything this channel is still owed, best first (`RANKING`: a digest's contents)."""
        rows = self.db.execute(
            f"""SELECT {_D_COLUMNS} FROM deliveries d JOIN papers p ON p.id = d.paper_id
                WHERE d.channel = ? AND d.status = 'pending' ORDER BY {RANKING} LIMIT ?""",
            [channel.key, limit],
        ).fetchall()
        return [_delivery(r) for r in rows]

    def count_pending(self, channel: ChannelRef | None = None) -> int:
        if channel is None:
            return self.db.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
        return self.db.execute(
            "SELECT count(*) FROM deliveries WHERE status = 'pending' AND channel = ?", [channel.key]
        ).fetchone()[0]

    def last_sent_at(self, channel: ChannelRef | None = None) -> datetime | None:
        sql = "SELECT max(sent_at) FROM deliveries WHERE status = 'sent'"
        row = self.db.execute(sql + (" AND channel = ?" if channel else ""),
                              [channel.key] if channel else []).fetchone()
        return datetime.fromisoformat(row[0]) if row[0] else None

    def claim_delivery(self, delivery_id: int, now: datetime | None = None) -> bool:
        """Mark a pending delivery as being sent; False if someone else claimed it first.
        Any thread (the bot claims from a worker thread: the write lock may be another's)."""
        sender = self.live_sender_id()
        with self._thread_db() as db:
            cursor = write(
                db,
                """UPDATE deliveries SET status = 'sending', attempts = attempts + 1, claimed_at = ?, claimed_by = ?
                    WHERE id = ? AND status = 'pending'""",
                [iso(now) if now else None, sender, delivery_id],
            )
            return cursor.rowcount == 1

    def unfinished_deliveries(self) -> list[Delivery]:
        """Deliveries a crash left in the middle of sending (`claimed_at`: when that send began;
        `claimed_by`: the claimer's sender_id), oldest first."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS}, claimed_by FROM deliveries WHERE status = 'sending' ORDER BY id").fetchall()
        return [replace(_delivery(row), claimed_by=row[7]) for row in rows]

    def release_delivery(self, delivery_id: int) -> None:
        """Back to pending: its outcome is unknown and nothing says it was sent.

        The interrupted attempt is not counted: a crash or a kill is not the paper's fault,
        and a bot restarted many times must not give up papers (MAX_ATTEMPTS) for it. Any thread."""
        with self._thread_db() as db:
            write(db, "UPDATE deliveries SET status = 'pending', attempts = max(attempts - 1, 0) "
                      "WHERE id = ? AND status = 'sending'", [delivery_id])

    def mark_sent(self, delivery_id: int, message_id: str | None, now: datetime) -> None:
        """Any thread."""
        with self._thread_db() as db:
            write(
                db,
                "UPDATE deliveries SET status = 'sent', message_id = ?, sent_at = ?, error = NULL WHERE id = ?",
                [message_id, iso(now), delivery_id],
            )

    def reschedule_delivery(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        """Record a failed attempt that will be tried again: back to pending until `retry_at`. Any thread."""
        with self._thread_db() as db:
            write(
                db,
                "UPDATE deliveries SET status = 'pending', error = ?, next_attempt_at = ? WHERE id = ?",
                [error[:500], iso(retry_at), delivery_id],
            )

    def give_up_delivery(self, delivery_id: int, error: str) -> None:
        """Record a failed attempt that ends the delivery: failed for good, never tried again. Any thread."""
        with self._thread_db() as db:
            write(db, "UPDATE deliveries SET status = 'failed', error = ? WHERE id = ?", [error[:500], delivery_id])

    def delivery_subscriptions(self, delivery_id: int) -> list[SubscriptionRef]:
        """The subscriptions a delivery answers that still exist, with their current queries, by id."""
        rows = self.db.execute(
            f"""SELECT DISTINCT s.id, s.query FROM deliveries d, json_each({MATCHED_OR_EMPTY.format(row="d")}) m
                  JOIN subscriptions s ON s.id = json_extract(m.value, '$.id')
                 WHERE d.id = ? ORDER BY s.id""",
            [delivery_id],
        ).fetchall()
        return [SubscriptionRef(row[0], row[1]) for row in rows]

    def delivery_counts(self) -> OutboxCounts:
        rows = self.db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        return OutboxCounts(**{status: count for status, count in rows if status in _STATUSES})


# How `deliveries.matched` keeps why a paper matched: facts, never chat text. JSON:
# [{"id": subscription id, "query": its query, "terms": [the terms that matched]}], made in
# SQL from enqueue_many's [id, query, terms] lists (`d`: one row of its payload).
_MATCHED_JSON = """SELECT json_group_array(json_object('id', json_extract(m.value, '$[0]'),
                                                      'query', json_extract(m.value, '$[1]'),
                                                      'terms', json(json_extract(m.value, '$[2]'))))
                     FROM json_each(d.value, '$[2]') m"""


# queue_matched's statement (`MatchedBatch` says what it reads). `p`: the batch's papers; `q`:
# a row a paper and channel, its subscription (`s`) read for a delivery of one match, its
# `many` (the matches of subscriptions that may receive it, as `matched`) and `many_channel`
# for a delivery of several. Only a subscription that exists and may receive its paper counts.
# The rows go in as the nested loop reads them, in the order given (the papers', then each
# paper's deliveries'): `CROSS JOIN` keeps that loop's order, and nothing sorts them.
# SQLite 3.40 has no binary JSON: every json_extract of an element parses its text (a cache
# keeps the last few), so a one-match delivery is read as text where that is exact (a JSON
# string's quote inside it is escaped): its subscription id leads the element (`[id,"query",
# [terms]]`, as json_each writes it, compactly); its strength is `match_strength`'s, the terms
# being distinct: those ending with " in title" are the texts ` in title"` in the element,
# less the query's own (followed by `,[`, where no term can be); `json_array_length` counts the
# terms. A delivery of several matches counts distinct terms out of its `matched`.
_STRENGTH = """1000 * min(count(DISTINCT CASE WHEN substr(t.value, -9) = ' in title' THEN t.value END), 999)
               + min(count(DISTINCT t.value), 999)"""
_MAY_RECEIVE = "CASE WHEN p.upto IS NOT NULL THEN s.id <= p.upto ELSE s.created_at <= p.since END"
_MANY = f"""FROM json_each(x.value) f JOIN subscriptions s ON s.id = json_extract(f.value, '$[0]')
                WHERE {_MAY_RECEIVE}"""
_QUEUE_MATCHED = f"""
WITH p AS MATERIALIZED (
    SELECT key AS i, json_extract(value, '$[0]') AS paper_id, json_extract(value, '$[1]') AS since,
           json_extract(value, '$[2]') AS upto
      FROM json_each(:papers)),
q AS (
    SELECT p.paper_id, x.value, substr(x.value, 2, 1) = '[' AS grouped, s.id, s.channel,
           CASE WHEN s.id IS NOT NULL THEN {_MAY_RECEIVE} END AS may,
           CASE WHEN substr(x.value, 2, 1) = '[' THEN (
               SELECT json_group_array(json_object('id', s.id, 'query', json_extract(f.value, '$[1]'),
                                                   'terms', json_extract(f.value, '$[2]')))
                 {_MANY}) END AS many,
           CASE WHEN substr(x.value, 2, 1) = '[' THEN (SELECT s.channel {_MANY} LIMIT 1) END AS many_channel
      FROM json_each(:matches) e
      CROSS JOIN p ON p.i = json_extract(e.value, '$[0]')
      CROSS JOIN json_each(e.value) x
      LEFT JOIN subscriptions s
        ON s.id = CASE WHEN substr(x.value, 2, 1) <> '[' THEN CAST(substr(x.value, 2) AS INTEGER) END
     WHERE x.key > 0)
INSERT OR IGNORE INTO deliveries (paper_id, channel, matched, strength, next_attempt_at, created_at)
SELECT paper_id, coalesce(channel, many_channel),
       CASE WHEN grouped THEN many
            ELSE json_array(json_object('id', id, 'query', json_extract(value, '$[1]'),
                                        'terms', json_extract(value, '$[2]'))) END,
       CASE WHEN grouped THEN (SELECT {_STRENGTH} FROM json_each(many) f, json_each(f.value, '$.terms') t)
            ELSE 1000 * min((length(value) - length(replace(value, ' in title"', ''))) / 10
                            - (instr(value, ' in title",[') > 0), 999)
                 + min(json_array_length(value, '$[2]'), 999) END,
       :now, :now
  FROM q WHERE may OR many_channel IS NOT NULL"""


# `_insert_made`'s statements, by rows a statement (a few sizes, so each is prepared once a
# connection: Python's sqlite3 keeps them): ?1 the time, ?2 the version the deliveries were
# made at, then four values a delivery; rows past the batch's own are NULLs, skipped. The
# deliveries' values are plain `?`, numbered on from ?2 (both appear before them): SQLite
# prepares a statement of `?NNN` in time quadratic in their number (31 ms for 1,024 rows,
# 119 ms for 2,048, 463 ms for 4,096 on this machine; 3 to 30 ms as `?`), once a size a
# connection: in the poller's writer thread, at its first poll. The time stays a bound
# value (`?1` in each row: not copied, as a column of a subquery's would be, a row); the
# version's comparison is made once. The VALUES alone are the FROM: read, and inserted,
# in their order, as they come.
_MADE_ROWS = (64, 128, 256, 512, 1024, 2048, 4096)
_MADE_SQL = {size: f"""
    WITH p AS (SELECT ?2 AS version)
    INSERT OR IGNORE INTO deliveries (paper_id, channel, matched, strength, next_attempt_at, created_at)
    SELECT column1, column2, column3, column4, ?1, ?1
      FROM (VALUES {",".join("(?,?,?,?)" for _ in range(size))})
     WHERE column1 IS NOT NULL AND (SELECT version FROM p) = {NEWEST_VERSION}""" for size in _MADE_ROWS}


def _insert_made(conn: sqlite3.Connection, deliveries: list, version: int, stamp: str) -> bool:
    """Insert deliveries made beforehand (`MatchedBatch.deliveries`), in their order, if the
    subscription version is still `version`; whether it was (then they are all in).

    Bound values, not JSON: nothing to parse, and each statement is one step (the GIL is
    given up once, not once a row as executemany's). In the transaction of `queue_matched`."""
    before, largest = conn.total_changes, _MADE_ROWS[-1]
    for start in range(0, len(deliveries), 4 * largest):
        part = deliveries[start:start + 4 * largest]
        size = next(size for size in _MADE_ROWS if 4 * size >= len(part))
        conn.execute(_MADE_SQL[size], [stamp, version, *part, *[None] * (4 * size - len(part))])
        if conn.total_changes == before:  # nothing new: the version changed, or all were queued before
            if conn.execute(f"SELECT {NEWEST_VERSION}").fetchone()[0] != version:
                return False
    return True


def match_strength(matches: list[Match]) -> int:
    """How strongly a channel's queries matched a paper, for ranking (higher is stronger):
    1000 x the distinct terms found in the title, plus the distinct terms matched in all.
    The same number `MATCH_STRENGTH` works out of `matched` for rows stored without it."""
    return terms_strength({term for match in matches for term in match.terms})


def _matched(channel: ChannelRef, text: str) -> tuple[Match, ...]:
    try:
        facts = json.loads(text)
    except (ValueError, TypeError):
        return ()
    return matches_of(channel, facts)


def matches_of(channel: ChannelRef, facts: object) -> tuple[Match, ...]:
    """`deliveries.matched` as decoded JSON (PostgreSQL's jsonb comes back decoded) -> Matches."""
    try:
        return tuple(Match(int(m["id"]), channel, str(m["query"]), tuple(map(str, m["terms"])))
                     for m in facts)  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError):  # not written by enqueue_many: the card just says no reason
        return ()


def _delivery(row) -> Delivery:
    channel = ChannelRef.from_key(row[2])
    return Delivery(id=row[0], paper_id=row[1], channel=channel, matched=_matched(channel, row[3]),
                    attempts=row[4], in_digest=bool(row[5]), claimed_at=parse_iso(row[6]))
