"""The outbox on PostgreSQL: deliveries are written before anything is sent, one row per
paper x channel (storage/deliveries.py is the SQLite one; storage/contract.py says what each
method does).

Several processes may deliver at once here. Who decides what, and how they take turns:

- `plan_burst` and `hold_back` decide about one channel from what they read: they take the
  channel's advisory lock (`_lock_channel`), so two planners of a channel take turns; and
  `plan_burst` locks the channel's outstanding digest rows (FOR UPDATE), so a deliverer
  claiming that digest waits for the plan, and a plan sees a digest claimed before it.
- Each claim (`claim_delivery`) is one UPDATE ... WHERE status = 'pending': of two claimers
  of one row, the second waits for the first and then finds it no longer pending, so a row
  is handed to exactly one claimer. Claims, and the recovery of claims a crash left
  (`unfinished_deliveries`, `release_delivery`), are together at the end of the class.
- `enqueue_many` is set-based (COPY into a temporary table, then one INSERT ... SELECT);
  `ON CONFLICT DO NOTHING` keeps one row per paper and channel, whoever inserts it first.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING

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
)

from ..deliveries import match_strength, matches_of
from .db import Database, from_db, utc

_STATUSES = {f.name for f in fields(OutboxCounts)}
# The columns `_delivery` reads, in its order (`d`: deliveries).
_COLUMNS = "d.id, d.paper_id, d.channel, d.matched, d.attempts, d.in_digest, d.claimed_at"

# `deliveries.matched` when it is a JSON array, else [] (it always is when enqueue_many wrote it).
MATCHED_OR_EMPTY = "CASE WHEN jsonb_typeof({row}.matched) = 'array' THEN {row}.matched ELSE '[]'::jsonb END"

# As storage/deliveries.py RANKING, best first: upvotes (unknown last); the strength of the
# match (`deliveries.strength`, written with the row by enqueue_many; worked out of `matched`
# for a row without it: 1000 x distinct terms found in the title + distinct terms, each at
# most 999); the newest paper; the oldest row. Over `deliveries d JOIN papers p`.
# ("%%": these go into statements with parameters.)
MATCH_STRENGTH = f"""coalesce(d.strength, (
    SELECT 1000 * least(count(DISTINCT t.term) FILTER (WHERE t.term LIKE '%% in title'), 999)
           + least(count(DISTINCT t.term), 999)
      FROM jsonb_array_elements({MATCHED_OR_EMPTY.format(row="d")}) m,
           LATERAL (SELECT e #>> '{{}}' AS term
                      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(m -> 'terms') = 'array'
                                                     THEN m -> 'terms' ELSE '[]'::jsonb END) e
                     WHERE jsonb_typeof(e) = 'string') t
     WHERE jsonb_typeof(m) = 'object'))"""
RANKING = (f"p.upvotes IS NULL, p.upvotes DESC, {MATCH_STRENGTH} DESC, "
           "coalesce(p.published, p.listed_on::timestamptz) IS NULL, "
           "coalesce(p.published, p.listed_on::timestamptz) DESC, d.id")


class DeliveriesMixin:
    """Statuses: pending -> sending -> sent | failed; or 'overflow' (storage/deliveries.py)."""

    db: Database
    if TYPE_CHECKING:
        def live_sender_id(self) -> str: ...  # RolesMixin's: this store's id, its liveness lock held
        def _reader(self) -> AbstractContextManager[Database]: ...  # PgStore's: this thread's connection

    # ---- queueing -----------------------------------------------------------------------------

    def enqueue(self, paper_id: str, matches: list[Match], now: datetime) -> int:
        return self.enqueue_many([PaperMatches(paper_id, tuple(matches))], now)

    def for_poll_writes(self) -> None:
        pass  # its foreign keys are checked as always (StoreContract.for_poll_writes)

    def takes_made_deliveries(self) -> bool:
        return False  # it reads `matches` (jsonb), whatever the batch holds

    def queue_matched(self, batch: MatchedBatch, now: datetime) -> int:
        """StoreContract.queue_matched, set-based as SQLite's (storage/deliveries.py): one
        statement reads the batch's JSON (`_QUEUE_MATCHED`), keeps the matches of subscriptions
        that exist and may receive their paper, groups them per paper and channel and queues
        them (a delivery of one match as the others: jsonb is parsed once); a second takes
        the batch's papers off the unmatched list, if it `settles`. One transaction. The
        change log's row is read FOR SHARE first, as `subscriptions_created_by` does: no
        subscription is removed before this commits. The writer thread holds the GIL only to
        send the two texts."""
        matches = batch.matches
        if "\\u0000" in matches:  # a NUL (jsonb refuses it): U+FFFD in its place, as enqueue_many
            matches = json.dumps([[entry[0], *map(_no_nul_delivery, entry[1:])] for entry in json.loads(matches)])
        with self.db.transaction():
            self.db.execute("SELECT 1 FROM subscription_version FOR SHARE")
            # The planner counts 100 elements a jsonb_array_elements, 330,000 rows at x's three
            # levels, and compiled this ~1,000-row statement (JIT: 0.7 s a transaction).
            self.db.execute("SET LOCAL jit = off")
            queued = self.db.execute(_QUEUE_MATCHED, {"papers": batch.papers, "matches": matches,
                                                      "now": utc(now)}).rowcount
            if batch.settles:
                self.db.execute(
                    "DELETE FROM unmatched_papers WHERE paper_id IN "
                    "(SELECT e ->> 0 FROM jsonb_array_elements(%s::jsonb) e)", [batch.papers])
        return queued

    def enqueue_many(self, items: list[PaperMatches], now: datetime) -> int:
        """`enqueue` for many papers, set-based: the rows go by COPY into a temporary table of
        this session, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING queues them all.
        A poll queues some 300,000 rows from the poller's writer thread: COPY is the cheapest
        way there for the client (the GIL it holds; bench/enqueue.py, docs/benchmarks.md) and
        for the server. The rows keep the order of `items` (their ids grow in that order)."""
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
        stamp = utc(now)
        with self.db.transaction():
            self.db.execute(
                """CREATE TEMPORARY TABLE IF NOT EXISTS enqueue_rows (
                       n bigserial, paper_id text, channel text, matched jsonb, strength integer)
                   ON COMMIT DELETE ROWS""")
            with self.db.conn.cursor() as cursor:
                with cursor.copy("COPY enqueue_rows (paper_id, channel, matched, strength) FROM STDIN") as copy:
                    for (paper_id, key), ms in rows.items():
                        copy.write_row((paper_id, key, _matched_json(ms), match_strength(ms)))
            made = self.db.execute(
                """INSERT INTO deliveries (paper_id, channel, matched, strength, next_attempt_at, created_at)
                   SELECT paper_id, channel, matched, strength, %s, %s FROM enqueue_rows ORDER BY n
                   ON CONFLICT (paper_id, channel) DO NOTHING""",
                [stamp, stamp],
            ).rowcount
            self.db.execute("TRUNCATE enqueue_rows")  # for a second call in the same transaction
        return made

    # ---- planning -----------------------------------------------------------------------------

    def due_channels(self, now: datetime) -> list[DueChannel]:
        """Any thread: on this thread's own connection (PgStore._reader)."""
        with self._reader() as db:
            rows = db.all(
                """SELECT due.channel, due.n FROM (
                       SELECT channel, count(*) AS n, min(id) AS first FROM deliveries
                        WHERE status = 'pending' AND next_attempt_at <= %s GROUP BY channel) AS due
                     LEFT JOIN channels c ON c.channel = due.channel
                    WHERE NOT coalesce(c.paused, false) AND coalesce(c.mode, 'instant') = 'instant'
                    ORDER BY due.first""",
                [utc(now)],
            )
        return [DueChannel(ChannelRef.from_key(row[0]), row[1]) for row in rows]

    def plan_burst(self, channel: ChannelRef, now: datetime, cards: int, digest_max: int) -> BurstPlan:
        """As storage/deliveries.py plan_burst. Any thread: on this thread's own connection
        (PgStore._reader), one transaction. Serialized per channel: the channel's advisory
        lock against other planners, and FOR UPDATE on its outstanding digest rows against a
        claimer of that digest. The decision itself is one UPDATE (one snapshot): a row queued
        while the channel is planned is either decided with the others or left for the next
        plan, never settled unseen."""
        key = channel.key
        with self._reader() as db, db.transaction():
            _lock_channel(db, channel)
            digest = db.all(
                """SELECT status FROM deliveries WHERE channel = %s AND status IN ('pending', 'sending')
                      AND in_digest FOR UPDATE""",
                [key],
            )
            if any(status == "sending" for (status,) in digest):
                return BurstPlan([], [])  # its "and N more" is written: what came since waits for the next burst
            in_digest = len(digest)
            if in_digest:  # a burst going on: its cards are decided; arrivals join the digest, or the overflow
                room = 0
            else:
                # Rows made cards before (not sent yet), and rows mid-send, are cards already.
                taken = db.scalar(
                    """SELECT count(*) FROM deliveries WHERE channel = %s AND status IN ('pending', 'sending')
                          AND NOT in_digest AND (card = 1 OR status = 'sending')""",
                    [key],
                )
                room = max(cards - taken, 0)
            digest_room = max(digest_max - in_digest, 0)
            # The undecided rows, ranked once: the best `room` become cards; when there are more
            # than that (or a burst is going on), the next `digest_room` join the digest and the
            # rest are settled as overflow.
            db.execute(
                f"""WITH ranked AS (
                        SELECT d.id, row_number() OVER (ORDER BY {RANKING}) AS n, count(*) OVER () AS total
                          FROM deliveries d JOIN papers p ON p.id = d.paper_id
                         WHERE d.channel = %(key)s AND d.status = 'pending' AND NOT d.in_digest AND d.card = 0)
                    UPDATE deliveries t
                       SET card = CASE WHEN r.n <= %(room)s THEN 1 ELSE t.card END,
                           in_digest = r.n > %(room)s AND r.n <= %(room)s + %(digest_room)s,
                           status = CASE WHEN r.n > %(room)s + %(digest_room)s THEN 'overflow' ELSE t.status END,
                           error = CASE WHEN r.n > %(room)s + %(digest_room)s THEN NULL ELSE t.error END
                      FROM ranked r
                     WHERE t.id = r.id AND (r.n <= %(room)s OR %(burst)s OR r.total > %(room)s)""",
                {"key": key, "room": room, "digest_room": digest_room, "burst": in_digest > 0},
            )
            # A digest holds digest_max: anything past that (an outbox from before this rule) is overflow too.
            db.execute(
                f"""UPDATE deliveries SET status = 'overflow', error = NULL
                     WHERE channel = %s AND status = 'pending' AND id IN (
                       SELECT d.id FROM deliveries d JOIN papers p ON p.id = d.paper_id
                        WHERE d.channel = %s AND d.status IN ('pending', 'sending') AND d.in_digest
                        ORDER BY d.status = 'pending', {RANKING} OFFSET %s)""",
                [key, key, digest_max],
            )
            rows = db.all(
                f"""SELECT {_COLUMNS} FROM deliveries d JOIN papers p ON p.id = d.paper_id
                    WHERE d.channel = %s AND d.status = 'pending' AND (d.in_digest OR d.card = 1)
                      AND d.next_attempt_at <= %s
                    ORDER BY d.in_digest, {RANKING} LIMIT %s""",
                [key, utc(now), cards + digest_max],
            )
        due = [_delivery(r) for r in rows]
        return BurstPlan([d for d in due if not d.in_digest], [d for d in due if d.in_digest])

    def hold_back(self, channel: ChannelRef, keep: int) -> None:
        """Any thread, as plan_burst."""
        with self._reader() as db, db.transaction():
            _lock_channel(db, channel)
            db.execute(
                f"""UPDATE deliveries SET status = 'overflow', error = NULL
                     WHERE channel = %s AND status = 'pending' AND id IN (
                       SELECT d.id FROM deliveries d JOIN papers p ON p.id = d.paper_id
                        WHERE d.channel = %s AND d.status = 'pending' ORDER BY {RANKING} OFFSET %s)""",
                [channel.key, channel.key, keep],
            )

    def unannounced_overflow(self, channel: ChannelRef) -> Overflow:
        """Any thread: on this thread's own connection."""
        with self._reader() as db:
            row = db.one(
                """SELECT count(*), coalesce(max(id), 0) FROM deliveries
                    WHERE channel = %s AND status = 'overflow' AND message_id IS NULL""",
                [channel.key],
            )
        assert row is not None
        return Overflow(row[0], row[1])

    def announce_overflow(self, channel: ChannelRef, up_to: int, message_id: str | None, now: datetime) -> None:
        """Any thread, as the outcomes below: on the calling thread's connection (`_reader`)."""
        with self._reader() as db:
            db.execute(
                """UPDATE deliveries SET message_id = %s, sent_at = %s
                    WHERE channel = %s AND status = 'overflow' AND message_id IS NULL AND id <= %s""",
                [message_id or "", utc(now), channel.key, up_to],
            )

    # ---- reading ------------------------------------------------------------------------------

    def pending_for_channel(self, channel: ChannelRef, limit: int = 1000) -> list[Delivery]:
        rows = self.db.all(
            f"""SELECT {_COLUMNS} FROM deliveries d JOIN papers p ON p.id = d.paper_id
                WHERE d.channel = %s AND d.status = 'pending' ORDER BY {RANKING} LIMIT %s""",
            [channel.key, limit],
        )
        return [_delivery(r) for r in rows]

    def count_pending(self, channel: ChannelRef | None = None) -> int:
        if channel is None:
            return int(self.db.scalar("SELECT count(*) FROM deliveries WHERE status = 'pending'"))
        return int(self.db.scalar("SELECT count(*) FROM deliveries WHERE status = 'pending' AND channel = %s",
                                  [channel.key]))

    def last_sent_at(self, channel: ChannelRef | None = None) -> datetime | None:
        if channel is None:
            return from_db(self.db.scalar("SELECT max(sent_at) FROM deliveries WHERE status = 'sent'"))
        return from_db(self.db.scalar("SELECT max(sent_at) FROM deliveries WHERE status = 'sent' AND channel = %s",
                                      [channel.key]))

    def delivery_subscriptions(self, delivery_id: int) -> list[SubscriptionRef]:
        rows = self.db.all(
            f"""SELECT DISTINCT s.id, s.query
                  FROM deliveries d, jsonb_array_elements({MATCHED_OR_EMPTY.format(row="d")}) m
                  JOIN subscriptions s ON s.id = (CASE WHEN jsonb_typeof(m -> 'id') = 'number'
                                                        AND (m ->> 'id') ~ '^[0-9]{{1,18}}$'
                                                       THEN (m ->> 'id')::bigint END)
                 WHERE d.id = %s ORDER BY s.id""",
            [delivery_id],
        )
        return [SubscriptionRef(row[0], row[1]) for row in rows]

    def delivery_counts(self) -> OutboxCounts:
        rows = self.db.all("SELECT status, count(*) FROM deliveries GROUP BY status")
        return OutboxCounts(**{status: count for status, count in rows if status in _STATUSES})

    # ---- outcomes -----------------------------------------------------------------------------

    def mark_sent(self, delivery_id: int, message_id: str | None, now: datetime) -> None:
        # One statement (its own transaction); the trigger deliveries_sent_count counts it. Any thread.
        with self._reader() as db:
            db.execute(
                "UPDATE deliveries SET status = 'sent', message_id = %s, sent_at = %s, error = NULL WHERE id = %s",
                [message_id, utc(now), delivery_id],
            )

    def reschedule_delivery(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        with self._reader() as db:  # any thread
            db.execute(
                "UPDATE deliveries SET status = 'pending', error = %s, next_attempt_at = %s WHERE id = %s",
                [no_nul(error[:500]), utc(retry_at), delivery_id],
            )

    def give_up_delivery(self, delivery_id: int, error: str) -> None:
        with self._reader() as db:  # any thread
            db.execute("UPDATE deliveries SET status = 'failed', error = %s WHERE id = %s",
                       [no_nul(error[:500]), delivery_id])

    # ---- claims, and the recovery of claims a crash left ------------------------------------

    def claim_delivery(self, delivery_id: int, now: datetime | None = None) -> bool:
        """pending -> sending, for exactly one claimer, named in `claimed_by` (its liveness
        lock held: storage/postgres/roles.py). The row is taken FOR UPDATE SKIP LOCKED: a row
        another deliverer is claiming (or a transaction is changing) is passed over at once,
        not waited for; once that one commits the row is no longer pending anyway. Any thread."""
        sender = self.live_sender_id()
        with self._reader() as db:
            row = db.one(
                """UPDATE deliveries SET status = 'sending', attempts = attempts + 1, claimed_at = %s, claimed_by = %s
                    WHERE id = (SELECT id FROM deliveries WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED)
                   RETURNING id""",
                [utc(now) if now else None, sender, delivery_id],
            )
        return row is not None

    def unfinished_deliveries(self) -> list[Delivery]:
        rows = self.db.all(
            f"SELECT {_COLUMNS}, d.claimed_by FROM deliveries d WHERE d.status = 'sending' ORDER BY d.id")
        return [replace(_delivery(row), claimed_by=row[7]) for row in rows]

    def release_delivery(self, delivery_id: int) -> None:
        """Back to pending, the interrupted attempt not counted (storage/deliveries.py). Any thread."""
        with self._reader() as db:
            db.execute("UPDATE deliveries SET status = 'pending', attempts = greatest(attempts - 1, 0) "
                       "WHERE id = %s AND status = 'sending'", [delivery_id])


# queue_matched's statement, as SQLite's (storage/deliveries.py _QUEUE_MATCHED). `p`: the batch's
# papers (`i`: index from 0); `m`: every match of a subscription that exists and may receive its
# paper (id up to the paper's `upto`, else created by its `since`), `k` its place in the batch;
# `g`: one row a paper and channel, its `matched` the facts in the order given; the strength is
# `match_strength`'s, out of the group's terms. Rows are inserted in the batch's order (paper,
# then a channel's first match), as enqueue_many does. ("%%": a statement with parameters.)
_QUEUE_MATCHED = """
WITH p AS MATERIALIZED (
    SELECT x.i - 1 AS i, x.e ->> 0 AS paper_id, (x.e ->> 1)::timestamptz AS since, (x.e ->> 2)::bigint AS upto
      FROM jsonb_array_elements(%(papers)s::jsonb) WITH ORDINALITY AS x(e, i)),
x AS MATERIALIZED (
    SELECT p.paper_id, p.since, p.upto, e.n, d.k, f.j, f.e
      FROM jsonb_array_elements(%(matches)s::jsonb) WITH ORDINALITY AS e(e, n)
      JOIN p ON p.i = (e.e ->> 0)::bigint,
           jsonb_array_elements(e.e) WITH ORDINALITY AS d(e, k),
           jsonb_array_elements(CASE WHEN jsonb_typeof(d.e -> 0) = 'array' THEN d.e
                                     ELSE jsonb_build_array(d.e) END) WITH ORDINALITY AS f(e, j)
     WHERE d.k > 1),
m AS (
    SELECT x.paper_id, s.channel, x.n, x.k, x.j,
           jsonb_build_object('id', s.id, 'query', x.e -> 1, 'terms', x.e -> 2) AS fact, x.e -> 2 AS terms
      -- one index lookup a match (OFFSET 0: not flattened into a join, which the planner, counting
      -- 100 elements a jsonb_array_elements at each of x's three levels, made a hash join over a
      -- scan of every subscription: 90 ms a transaction at 100,000)
      FROM x CROSS JOIN LATERAL (SELECT s.id, s.channel, s.created_at FROM subscriptions s
                                  WHERE s.id = (x.e ->> 0)::bigint OFFSET 0) s
     WHERE CASE WHEN x.upto IS NOT NULL THEN s.id <= x.upto ELSE s.created_at <= x.since END),
g AS (
    SELECT m.n, m.k, m.paper_id, m.channel, jsonb_agg(m.fact ORDER BY m.j) AS matched,
           (SELECT 1000 * least(count(DISTINCT t) FILTER (WHERE t LIKE '%% in title'), 999)
                   + least(count(DISTINCT t), 999)
              FROM unnest(array_agg(m.terms)) f, jsonb_array_elements_text(f) t) AS strength
      FROM m GROUP BY m.n, m.k, m.paper_id, m.channel)
INSERT INTO deliveries (paper_id, channel, matched, strength, next_attempt_at, created_at)
SELECT paper_id, channel, matched, strength, %(now)s, %(now)s FROM g ORDER BY n, k
ON CONFLICT (paper_id, channel) DO NOTHING"""


def _lock_channel(db: Database, channel: ChannelRef) -> None:
    """Inside a transaction: the channel's planners (plan_burst, hold_back) take turns, in any
    thread or process."""
    db.lock(f"deliveries channel {channel.key}")


def _matched_json(matches: list[Match]) -> str:
    """How `deliveries.matched` keeps why a paper matched: facts, never chat text (as SQLite's):
    [{"id": subscription id, "query": its query, "terms": [the terms that matched]}]."""
    text = json.dumps([{"id": m.subscription_id, "query": m.query, "terms": m.terms} for m in matches])
    if "\\u0000" not in text:  # (a NUL is written \u0000; the check is cheap, the rebuild rare)
        return text
    return json.dumps([{"id": m.subscription_id, "query": no_nul(m.query), "terms": [no_nul(t) for t in m.terms]}
                       for m in matches])


def _no_nul_delivery(delivery: list) -> list:
    """A delivery of `MatchedBatch.matches` (a match, or a list of them) with no NUL (`no_nul`)."""
    if delivery and isinstance(delivery[0], list):
        return [_no_nul_delivery(match) for match in delivery]
    sub, query, terms = delivery
    return [sub, no_nul(query), [no_nul(t) for t in terms]]


def no_nul(text: str) -> str:
    """PostgreSQL's text and jsonb refuse the NUL character (SQLite keeps it): U+FFFD in its place,
    rather than a whole poll's enqueue_many, or a retry's error, failing over one character."""
    return text.replace("\x00", "\ufffd")


def _delivery(row: tuple) -> Delivery:
    channel = ChannelRef.from_key(row[2])
    return Delivery(id=row[0], paper_id=row[1], channel=channel, matched=matches_of(channel, row[3]),
                    attempts=row[4], in_digest=bool(row[5]), claimed_at=from_db(row[6]))
