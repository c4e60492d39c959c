"""The outbox: deliveries are written before anything is sent, one row per paper x channel."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING

from sqlite_utils import Database

from bot.models import (
    BurstPlan,
    ChannelRef,
    Delivery,
    DueChannel,
    Match,
    OutboxCounts,
    Overflow,
    PaperMatches,
    SubscriptionRef,
)

from .db import immediate, iso, parse_iso, write

_STATUSES = {f.name for f in fields(OutboxCounts)}
# The columns `_delivery` reads, in its order.
_COLUMNS = "id, paper_id, channel, matched, attempts, in_digest, claimed_at"


class DeliveriesMixin:
    """Statuses: pending -> sending -> sent | failed; or 'overflow': settled without being
    posted, because a burst had more than a channel's cards and one digest hold (the digest
    says how many; message_id names it once it has)."""

    db: Database
    if TYPE_CHECKING:
        def _reader(self) -> AbstractContextManager[Database]: ...  # PapersMixin's: this thread's connection

    def enqueue(self, paper_id: str, matches: list[Match], now: datetime) -> int:
        """Queue `paper_id` for every channel among `matches`; returns how many rows were new.

        Several subscriptions of one channel matching one paper make one delivery that
        keeps them all (`Delivery.matched`: their ids, queries and the terms that matched).
        A channel that already has this paper gets nothing new.
        """
        return self.enqueue_many([PaperMatches(paper_id, tuple(matches))], now)

    def enqueue_many(self, items: list[PaperMatches], now: datetime) -> int:
        """`enqueue` for many papers in one transaction, two statements in all (executemany)."""
        rows: dict[tuple[str, str], list[Match]] = {}
        for item in items:
            for match in item.matches:
                rows.setdefault((item.paper_id, match.channel.key), []).append(match)
        if not rows:
            return 0
        stamp = iso(now)
        values = [(paper_id, key, _matched_json(ms), stamp, stamp) for (paper_id, key), ms in rows.items()]
        with immediate(self.db):  # as little as can be under the write lock
            # Under the write lock, ids grow (AUTOINCREMENT): the rows above `last` are the new ones.
            last = self.db.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[0]
            self.db.conn.executemany(
                """INSERT OR IGNORE INTO deliveries (paper_id, channel, matched, next_attempt_at, created_at)
                   VALUES (?, ?, ?, ?, ?)""",
                values,
            )
            created = self.db.execute("SELECT id, paper_id, channel FROM deliveries WHERE id > ?", [last]).fetchall()
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO delivery_matches (delivery_id, subscription_id) VALUES (?, ?)",
                [(delivery_id, m.subscription_id) for delivery_id, paper_id, key in created
                 for m in rows.get((paper_id, key), ())],
            )
        return len(created)

    def due_channels(self, now: datetime) -> list[DueChannel]:
        """Channels in instant mode, not paused, with deliveries due (and how many), the
        channel waiting longest first. Each is then planned on its own (`plan_burst`), so no
        channel's backlog decides what another channel gets. Any thread (a connection of its
        own off the store's thread): each due row is counted, hundreds of ms at 200,000+.
        Counted per channel first, then joined to the channels' settings (once a channel,
        not once a row)."""
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

        A burst starts when the channel has no digest outstanding: its oldest `cards`
        deliveries are cards, the next `digest_max` its one digest, anything further is
        settled as 'overflow': not posted, counted in that digest ("and N more matched").
        Until that digest is sent the burst goes on: whatever arrives meanwhile joins the
        digest while it has room, else the overflow, never the cards (once the digest is on
        its way, its count is written: what arrives then waits for the next burst). No
        decision is ever revisited, so rate limits may stretch a burst over many sweeps,
        and it still gives at most `cards` cards and one digest. A platform outage is one
        burst too. Returns the due cards and the due digest members, oldest first.
        """
        key = channel.key
        with immediate(self.db):
            in_digest, first_in_digest, digest_in_flight = self.db.execute(
                """SELECT count(*), min(id), coalesce(max(status = 'sending'), 0) FROM deliveries
                    WHERE channel = ? AND in_digest = 1 AND status IN ('pending', 'sending')""",
                [key],
            ).fetchone()
            boundary = None  # rows after this id that are neither cards nor (yet) in the digest
            if digest_in_flight:
                return BurstPlan([], [])  # its "and N more" is written: what came since waits for the next burst
            if in_digest:
                boundary = first_in_digest  # a burst going on: its cards are the rows before its digest
            else:
                kept = self.db.execute(
                    """SELECT id FROM deliveries
                        WHERE channel = ? AND in_digest = 0 AND status IN ('pending', 'sending')
                        ORDER BY id LIMIT ?""",
                    [key, cards],
                ).fetchall()
                if len(kept) == cards:
                    boundary = kept[-1][0] if kept else 0
            if boundary is not None:
                self.db.execute(
                    """UPDATE deliveries SET in_digest = 1 WHERE id IN (
                         SELECT id FROM deliveries WHERE channel = ? AND in_digest = 0 AND status = 'pending' AND id > ?
                          ORDER BY id LIMIT ?)""",
                    [key, boundary, max(digest_max - in_digest, 0)],
                )
                self.db.execute(
                    """UPDATE deliveries SET status = 'overflow', error = NULL
                        WHERE channel = ? AND in_digest = 0 AND status = 'pending' AND id > ?""",
                    [key, boundary],
                )
            # A digest holds digest_max: anything past that (an outbox from before this rule) is overflow too.
            self.db.execute(
                """UPDATE deliveries SET status = 'overflow', error = NULL WHERE status = 'pending' AND id IN (
                     SELECT id FROM deliveries WHERE channel = ? AND in_digest = 1 AND status IN ('pending', 'sending')
                      ORDER BY id LIMIT -1 OFFSET ?)""",
                [key, digest_max],
            )
            rows = self.db.execute(
                f"""SELECT {_COLUMNS} FROM deliveries
                    WHERE channel = ? AND status = 'pending' AND next_attempt_at <= ? ORDER BY in_digest, id LIMIT ?""",
                [key, iso(now), cards + digest_max],
            ).fetchall()
        due = [_delivery(r) for r in rows]
        return BurstPlan([d for d in due if not d.in_digest], [d for d in due if d.in_digest])

    def hold_back(self, channel: ChannelRef, keep: int) -> None:
        """A scheduled digest holds `keep` papers: settle the rest of what the channel is owed
        as 'overflow' (counted in that digest, not posted)."""
        write(
            self.db,
            """UPDATE deliveries SET status = 'overflow', error = NULL WHERE id IN (
                 SELECT id FROM deliveries WHERE channel = ? AND status = 'pending' ORDER BY id LIMIT -1 OFFSET ?)""",
            [channel.key, keep],
        )

    def unannounced_overflow(self, channel: ChannelRef) -> Overflow:
        """How many of the channel's overflow rows no digest has mentioned yet, and the highest id."""
        row = self.db.execute(
            """SELECT count(*), coalesce(max(id), 0) FROM deliveries
                WHERE channel = ? AND status = 'overflow' AND message_id IS NULL""",
            [channel.key],
        ).fetchone()
        return Overflow(row[0], row[1])

    def announce_overflow(self, channel: ChannelRef, up_to: int, message_id: str | None, now: datetime) -> None:
        """Record the digest that said "and N more" about these overflow rows."""
        write(
            self.db,
            """UPDATE deliveries SET message_id = ?, sent_at = ?
                WHERE channel = ? AND status = 'overflow' AND message_id IS NULL AND id <= ?""",
            [message_id or "", iso(now), channel.key, up_to],
        )

    def pending_for_channel(self, channel: ChannelRef, limit: int = 1000) -> list[Delivery]:
        """Everything this channel is still owed, oldest first (a digest's contents)."""
        rows = self.db.execute(
            f"""SELECT {_COLUMNS} FROM deliveries
                WHERE channel = ? AND status = 'pending' ORDER BY id LIMIT ?""",
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
        """Mark a pending delivery as being sent; False if someone else claimed it first."""
        cursor = write(
            self.db,
            """UPDATE deliveries SET status = 'sending', attempts = attempts + 1, claimed_at = ?
                WHERE id = ? AND status = 'pending'""",
            [iso(now) if now else None, delivery_id],
        )
        return cursor.rowcount == 1

    def unfinished_deliveries(self) -> list[Delivery]:
        """Deliveries a crash left in the middle of sending (`claimed_at`: when that send began), oldest first."""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'sending' ORDER BY id").fetchall()
        return [_delivery(row) for row in rows]

    def release_delivery(self, delivery_id: int) -> None:
        """Back to pending: its outcome is unknown and nothing says it was sent.

        The interrupted attempt is not counted: a crash or a kill is not the paper's fault,
        and a bot restarted many times must not give up papers (MAX_ATTEMPTS) for it."""
        write(self.db, "UPDATE deliveries SET status = 'pending', attempts = max(attempts - 1, 0) "
                       "WHERE id = ? AND status = 'sending'", [delivery_id])

    def mark_sent(self, delivery_id: int, message_id: str | None, now: datetime) -> None:
        write(
            self.db,
            "UPDATE deliveries SET status = 'sent', message_id = ?, sent_at = ?, error = NULL WHERE id = ?",
            [message_id, iso(now), delivery_id],
        )

    def reschedule_delivery(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        """Record a failed attempt that will be tried again: back to pending until `retry_at`."""
        write(
            self.db,
            "UPDATE deliveries SET status = 'pending', error = ?, next_attempt_at = ? WHERE id = ?",
            [error[:500], iso(retry_at), delivery_id],
        )

    def give_up_delivery(self, delivery_id: int, error: str) -> None:
        """Record a failed attempt that ends the delivery: failed for good, never tried again."""
        write(
            self.db,
            "UPDATE deliveries SET status = 'failed', error = ? WHERE id = ?", [error[:500], delivery_id]
        )

    def delivery_subscriptions(self, delivery_id: int) -> list[SubscriptionRef]:
        """The subscriptions a delivery answers that still exist, with their current queries, by id."""
        rows = self.db.execute(
            """SELECT s.id, s.query FROM delivery_matches m JOIN subscriptions s ON s.id = m.subscription_id
                WHERE m.delivery_id = ? ORDER BY s.id""",
            [delivery_id],
        ).fetchall()
        return [SubscriptionRef(row[0], row[1]) for row in rows]

    def delivery_counts(self) -> OutboxCounts:
        rows = self.db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        return OutboxCounts(**{status: count for status, count in rows if status in _STATUSES})


def _matched_json(matches: list[Match]) -> str:
    """How `deliveries.matched` keeps why a paper matched: facts, never chat text."""
    return json.dumps([{"id": m.subscription_id, "query": m.query, "terms": list(m.terms)} for m in matches])


def _matched(channel: ChannelRef, text: str) -> tuple[Match, ...]:
    try:
        return tuple(Match(int(m["id"]), channel, str(m["query"]), tuple(map(str, m["terms"])))
                     for m in json.loads(text))
    except (ValueError, TypeError, KeyError):  # not written by _matched_json: the card just says no reason
        return ()


def _delivery(row) -> Delivery:
    channel = ChannelRef.from_key(row[2])
    return Delivery(id=row[0], paper_id=row[1], channel=channel, matched=_matched(channel, row[3]),
                    attempts=row[4], in_digest=bool(row[5]), claimed_at=parse_iso(row[6]))
