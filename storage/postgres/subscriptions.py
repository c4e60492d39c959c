"""Per-channel subscriptions, on PostgreSQL, and their change log (versions).

The change log: every subscription added or whose query changed gets a version, one more
than any given before, from the one row of `subscription_version`. Engines in every process
catch up with `subscriptions_changed_since(v)` and then remember the newest version they saw.
That holds only if no reader can see version N+1 committed while N is still uncommitted
(it would catch up to N+1 and never ask for N again). A sequence does not give that: under
MVCC, numbers are handed out in one order and committed in another. So a writer bumps the
version with an UPDATE of that row, whose row lock it holds until it commits: the next
writer's UPDATE waits for that commit, then reads the version it left. Versions are thus
handed out, and committed, one after the other, and a version read anywhere means every
lower one is committed. Subscription ids are drawn under the same lock, so they too grow in
commit order (`newest_subscription_id`).

Removals take the row too, and a new version when they remove something (as SQLite's
trigger m029 gives one: the poller's writer inserts deliveries made at a version as they are
only while it is the newest, storage/deliveries.py), and the poller's transactions that read
subscriptions to act on them (newest_subscription_id, subscriptions_created_by) hold it FOR
SHARE until they commit: what they read is not removed or added under them, as under
SQLite's single write lock, and only this one row is locked, however many subscriptions.

Lock order: every method here that writes subscriptions takes that row first (UPDATE or
SELECT ... FOR UPDATE) and nothing of this area before it, so a transaction doing several
(import: many channels in one) never deadlocks with another. A channel's limit is decided
under it too: it serializes every subscription writer, which is more than the channel (a
separate per-channel lock taken before the row would deadlock with such an import), and
subscriptions are written a few at a time by people, so nothing waits for long.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from bot.collection import no_collection
from bot.errors import QueryError
from bot.matching import compile_query
from bot.models import (
    ChannelRef,
    Paper,
    StoredQuery,
    Subscribed,
    Subscription,
    SubscriptionChanges,
    stored_subscription,
)

from ..subscriptions import refacted_rows, requeried, unsubscribed_rows
from .db import Database, from_db, utc

_COLUMNS = "id, channel, query, created_by, created_at, delivered"  # delivered: the sent count (trigger)
_SELECT = f"SELECT {_COLUMNS} FROM subscriptions"

# Takes the change log's row lock (held until commit) and hands out the next version.
_BUMP = "UPDATE subscription_version SET version = version + 1 RETURNING version"
# The same row lock without a new version: for writers that may not need one.
_LOCK_LOG = "SELECT version FROM subscription_version FOR UPDATE"


class SubscriptionsMixin:
    db: Database

    if TYPE_CHECKING:
        def get_paper(self, paper_id: str) -> Paper | None: ...  # PapersMixin's

    def add_subscription(
        self, channel: ChannelRef, query: str, user_id: str, now: datetime, *, limit: int | None = None
    ) -> Subscribed:
        """Subscribe `channel` to `query`; the same query again returns the existing one, not
        created; with `limit`, a channel at it gets none (storage/contract.py)."""
        with self.db.transaction():
            # The change log's row lock first: the existence check, the count and the insert
            # are then one decision no other process makes at the same time (see the module).
            self.db.execute(_LOCK_LOG)
            existing = self.db.one("SELECT id FROM subscriptions WHERE channel = %s AND query = %s",
                                   [channel.key, query])
            if existing:
                return Subscribed(self.get_subscription(existing[0]), False)
            if limit is not None and self.count_subscriptions(channel) >= limit:
                return Subscribed(None, False)
            version = self.db.scalar(_BUMP)
            row = self.db.one(
                f"""INSERT INTO subscriptions (channel, query, created_by, created_at, version, compiled)
                    VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
                [channel.key, query, user_id, utc(now), version, _compiled(query)])
            assert row is not None
            # Drawn under the row lock, so ids grow in commit order; kept here, committed with it.
            self.db.execute("UPDATE subscription_version SET newest_id = greatest(newest_id, %s)", [row[0]])
            return Subscribed(_subscription(row), True)

    def get_subscription(self, subscription_id: int) -> Subscription | None:
        row = self.db.one(_SELECT + " WHERE id = %s", [subscription_id])
        return _subscription(row) if row else None

    def remove_subscription(self, channel: ChannelRef, subscription_id: int) -> Subscription | None:
        """Remove a subscription of this channel; None when the channel has no such id."""
        with self.db.transaction():
            self.db.execute(_LOCK_LOG)  # waits for the outbox writes that read it (subscriptions_created_by)
            row = self.db.one(f"DELETE FROM subscriptions WHERE id = %s AND channel = %s RETURNING {_COLUMNS}",
                              [subscription_id, channel.key])
            if row:
                self.db.execute(_BUMP)
                self._settle_unsubscribed(channel, {subscription_id})
            return _subscription(row) if row else None

    def _settle_unsubscribed(self, channel: ChannelRef, removed: set[int]) -> None:
        """As SQLite's (storage/subscriptions.py): in the removal's transaction."""
        rows = self.db.all("SELECT id, matched FROM deliveries WHERE channel = %s AND status = 'pending' FOR UPDATE",
                           [channel.key])
        self._refact_pending(*unsubscribed_rows(rows, removed))

    def _requery_pending(self, channel: ChannelRef, subscription_id: int, query: str) -> None:
        """As SQLite's (storage/subscriptions.py): in the change's transaction."""
        rows = self.db.all("SELECT id, matched, paper_id FROM deliveries WHERE channel = %s AND status = 'pending' "
                           "FOR UPDATE", [channel.key])
        papers = {row[0]: row[2] for row in rows}
        refact = requeried(subscription_id, query, lambda delivery_id: self.get_paper(papers[delivery_id]))
        if refact is not None:
            self._refact_pending(*refacted_rows([row[:2] for row in rows], refact))

    def _refact_pending(self, rewritten: list[tuple[str, int, int]], settled: list[int]) -> None:
        if rewritten:
            self.db.executemany("UPDATE deliveries SET matched = %s::jsonb, strength = %s WHERE id = %s", rewritten)
        if settled:
            self.db.execute("UPDATE deliveries SET status = 'unsubscribed' WHERE id = ANY(%s)", [settled])

    def subscriptions(self, channel: ChannelRef | None = None) -> list[Subscription]:
        if channel is None:
            rows = self.db.all(_SELECT + " ORDER BY id")
        else:
            rows = self.db.all(_SELECT + " WHERE channel = %s ORDER BY id", [channel.key])
        return [_subscription(row) for row in rows]

    def subscriptions_changed_since(self, version: int) -> SubscriptionChanges:
        """Subscriptions added or changed after `version` (without delivery counts, cheap
        enough for a million rows), and the newest version among all."""
        # First the log's version: every version up to it is committed (see the module), so the
        # rows read next (a later snapshot) hold them all. A row newer than it is fine too: its
        # version being committed means every lower one is.
        top = self.subscriptions_version()
        # created_at as whole seconds since the epoch (stored to the second): an int hashes and
        # compares far faster than an aware datetime, and is made into one once per distinct value.
        with no_collection():  # a million rows (see storage/subscriptions.py)
            rows = self.db.all("""SELECT id, channel, query, created_by, extract(epoch FROM created_at)::bigint,
                                         version, compiled
                                    FROM subscriptions WHERE version > %s""", [version])
            newest = max(max((row[5] for row in rows), default=version), top)
            # A million rows: channels and creation times are shared by many, made once each.
            channels: dict[str, ChannelRef] = {}
            times: dict[int, datetime] = {}
            found = []
            for sub_id, key, query, created_by, created_at, _, compiled in rows:
                ref = channels.get(key)
                if ref is None:
                    ref = channels[key] = ChannelRef.from_key(key)
                moment = times.get(created_at)
                if moment is None:
                    moment = times[created_at] = datetime.fromtimestamp(created_at, timezone.utc)  # NOT NULL
                found.append(stored_subscription(sub_id, ref, query, created_by, moment, 0,
                                                 None if compiled is None else bytes(compiled)))
        return SubscriptionChanges(found, newest)

    def save_compiled_queries(self, compiled: dict[int, tuple[str, bytes]]) -> None:
        """Keep the compiled form of these subscriptions' queries, where the query is still
        the one compiled; versions stay as they are."""
        if not compiled:
            return
        with self.db.transaction():
            self.db.executemany("UPDATE subscriptions SET compiled = %s WHERE id = %s AND query = %s",
                                [(blob, sub_id, query) for sub_id, (query, blob) in compiled.items()])

    def subscriptions_created_by(self, ids: list[int], moment: datetime, upto: int | None = None) -> set[int]:
        """Those of `ids` that exist and existed at `moment` (with `upto`: whose id is at most `upto`)."""
        if not ids:
            return set()
        if self.db.in_transaction:
            # The poller's writer queues deliveries for these in the same transaction: none of
            # them may be removed before it commits (SQLite: its write lock). A removal takes the
            # change log's row FOR UPDATE first, so it waits for this share lock.
            self.db.execute("SELECT 1 FROM subscription_version FOR SHARE")
        # One row, one array: the poller's writer thread calls this while its worker matches.
        if upto is not None:
            found = self.db.scalar("SELECT array_agg(id) FROM subscriptions WHERE id = ANY(%s) AND id <= %s",
                                   [list(ids), upto])
        else:
            found = self.db.scalar(
                "SELECT array_agg(id) FROM subscriptions WHERE id = ANY(%s) AND created_at <= %s",
                [list(ids), utc(moment)])
        return set(found or ())

    def newest_subscription_id(self) -> int:
        """The highest subscription id given so far (ids grow in commit order: see the module).

        Inside a transaction (the poller's, storing papers) the change log's row is read FOR
        SHARE and stays so until that transaction ends: a subscription being added meanwhile
        waits for it, so it gets a higher id and, committed after these papers, sees them
        (a --backfill), as under SQLite's single write lock."""
        if self.db.in_transaction:
            return int(self.db.scalar("SELECT newest_id FROM subscription_version FOR SHARE"))
        return int(self.db.scalar("SELECT newest_id FROM subscription_version"))

    def subscriptions_version(self) -> int:
        """The newest subscription version (grows with every subscription added, changed or removed)."""
        return int(self.db.scalar("SELECT version FROM subscription_version"))

    def subscription_ids(self) -> set[int]:
        return set(self.db.scalar("SELECT array_agg(id) FROM subscriptions") or ())

    def subscription_queries(self, upto: int) -> list[StoredQuery]:
        rows = self.db.all("SELECT id, query, channel FROM subscriptions WHERE version <= %s", [upto])
        return list(map(StoredQuery._make, rows))

    def change_subscription_query(
        self, channel: ChannelRef, subscription_id: int, query: str, *, expected: str | None = None
    ) -> Subscription | None:
        """Give a subscription of this channel a new query (keeping its id); None if it has no such id.
        Unchanged when its query is no longer `expected`, or another of the channel's has `query`."""
        with self.db.transaction():
            self.db.execute(_LOCK_LOG)  # as add_subscription: the checks and the change are one decision
            found = self.get_subscription(subscription_id)
            if found is None or found.channel != channel:
                return None
            if expected is not None and found.query != expected:
                return found
            if self.db.one("SELECT 1 FROM subscriptions WHERE channel = %s AND query = %s AND id <> %s",
                           [channel.key, query, subscription_id]):
                return found
            version = self.db.scalar(_BUMP)
            row = self.db.one(
                f"UPDATE subscriptions SET query = %s, compiled = %s, version = %s WHERE id = %s RETURNING {_COLUMNS}",
                [query, _compiled(query), version, subscription_id])
            if row:
                self._requery_pending(channel, subscription_id, query)
            return _subscription(row) if row else None

    def remove_all_subscriptions(self, channel: ChannelRef) -> list[Subscription]:
        with self.db.transaction():
            self.db.execute(_LOCK_LOG)  # as remove_subscription
            rows = self.db.all(f"DELETE FROM subscriptions WHERE channel = %s RETURNING {_COLUMNS}", [channel.key])
            if rows:
                self.db.execute(_BUMP)
                self._settle_unsubscribed(channel, {row[0] for row in rows})
        return sorted((_subscription(row) for row in rows), key=lambda s: s.id)

    def count_subscriptions(self, channel: ChannelRef) -> int:
        return int(self.db.scalar("SELECT count(*) FROM subscriptions WHERE channel = %s", [channel.key]))


def _compiled(query: str) -> bytes | None:
    """The matching engine's compiled form of a query; None if it does not parse (the
    engine then parses it, and logs and skips it, itself)."""
    try:
        return compile_query(query)
    except QueryError:
        return None


def _subscription(row: tuple) -> Subscription:
    created_at = from_db(row[4])
    assert created_at is not None  # NOT NULL
    return Subscription(id=row[0], channel=ChannelRef.from_key(row[1]), query=row[2], created_by=row[3],
                        created_at=created_at, delivered=row[5])
