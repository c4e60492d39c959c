"""Per-channel subscriptions."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable

from sqlite_utils import Database

from bot.collection import no_collection
from bot.errors import QueryError
from bot.matching import PaperView, compile_query, evaluate
from bot.models import (
    ChannelRef,
    Paper,
    StoredQuery,
    Subscribed,
    Subscription,
    SubscriptionChanges,
    stored_subscription,
    terms_strength,
)
from bot.query import parse_query

from .db import immediate, iso

# The version a subscription gets when added or changed: one more than any given before,
# kept in subscription_version (m020). The newest subscription's own version is not enough:
# removed, it took the highest version with it, and the next one got the same number again,
# which the poller's engine (caught up to that version) never loaded.
_NEXT_VERSION = "(SELECT version FROM subscription_version)"
# The newest version (`subscriptions_version`), as an expression: also in the poll's outbox
# INSERT, which checks under the write lock that nothing changed (storage/deliveries.py).
NEWEST_VERSION = ("(SELECT max(v.version, (SELECT coalesce(max(version), 0) FROM subscriptions))"
                  " FROM subscription_version v)")
_BUMP_VERSION = """UPDATE subscription_version
                      SET version = max(version, (SELECT coalesce(max(version), 0) FROM subscriptions)) + 1"""

_SELECT = """
    SELECT s.id, s.channel, s.query, s.created_by, s.created_at, s.delivered  -- sent deliveries (m020's trigger)
      FROM subscriptions s
"""


class SubscriptionsMixin:
    db: Database

    if TYPE_CHECKING:
        def get_paper(self, paper_id: str) -> Paper | None: ...  # PapersMixin's

    def add_subscription(
        self, channel: ChannelRef, query: str, user_id: str, now: datetime, *, limit: int | None = None
    ) -> Subscribed:
        """Subscribe `channel` to `query`; returns the subscription and whether it is new.
        Idempotent per channel: the same query again returns the existing one, not created.

        With `limit`, a channel that already has `limit` subscriptions gets no new one
        (the subscription is None, not created). The count and the insert are one transaction, so processes adding
        at the same time never go over it.
        """
        with immediate(self.db):
            existing = self.db.execute(
                "SELECT id FROM subscriptions WHERE channel = ? AND query = ?", [channel.key, query]
            ).fetchone()
            if existing:
                return Subscribed(self.get_subscription(existing[0]), False)
            if limit is not None and self.count_subscriptions(channel) >= limit:
                return Subscribed(None, False)
            self.db.execute(_BUMP_VERSION)
            cursor = self.db.execute(
                f"""INSERT INTO subscriptions (channel, query, created_by, created_at, version, compiled)
                    VALUES (?, ?, ?, ?, {_NEXT_VERSION}, ?)""",
                [channel.key, query, user_id, iso(now), _compiled(query)],
            )
            new_id = cursor.lastrowid
            assert new_id is not None  # set by every successful INSERT
            return Subscribed(self.get_subscription(new_id), True)

    def get_subscription(self, subscription_id: int) -> Subscription | None:
        row = self.db.execute(_SELECT + " WHERE s.id = ?", [subscription_id]).fetchone()
        return _subscription(row) if row else None

    def remove_subscription(self, channel: ChannelRef, subscription_id: int) -> Subscription | None:
        """Remove a subscription of this channel; None when the channel has no such id."""
        with immediate(self.db):
            found = self.get_subscription(subscription_id)
            if found is None or found.channel != channel:
                return None
            self.db.execute("DELETE FROM subscriptions WHERE id = ?", [subscription_id])
            self._settle_unsubscribed(channel, {subscription_id})
            return found

    def _settle_unsubscribed(self, channel: ChannelRef, removed: set[int]) -> None:
        """In the removal's transaction: the channel's deliveries not sent yet stop naming the
        removed subscriptions, and those only they matched are never posted (`unsubscribed_rows`)."""
        rows = self.db.execute("SELECT id, matched FROM deliveries WHERE channel = ? AND status = 'pending'",
                               [channel.key]).fetchall()
        self._refact_pending(*unsubscribed_rows(rows, removed))

    def _requery_pending(self, channel: ChannelRef, subscription_id: int, query: str) -> None:
        """In the change's transaction: the channel's deliveries not sent yet that name the
        subscription are matched again with its new query (`requeried`): a `mute` keeps
        what it would have muted from being posted."""
        rows = self.db.execute("SELECT id, matched, paper_id FROM deliveries WHERE channel = ? AND status = 'pending'",
                               [channel.key]).fetchall()
        papers = {row[0]: row[2] for row in rows}
        refact = requeried(subscription_id, query, lambda delivery_id: self.get_paper(papers[delivery_id]))
        if refact is not None:
            self._refact_pending(*refacted_rows([row[:2] for row in rows], refact))

    def _refact_pending(self, rewritten: list[tuple[str, int, int]], settled: list[int]) -> None:
        self.db.conn.executemany("UPDATE deliveries SET matched = ?, strength = ? WHERE id = ? AND status = 'pending'",
                                 rewritten)
        self.db.conn.executemany("UPDATE deliveries SET status = 'unsubscribed' WHERE id = ? AND status = 'pending'",
                                 [(delivery_id,) for delivery_id in settled])

    def subscriptions(self, channel: ChannelRef | None = None) -> list[Subscription]:
        if channel is None:
            rows = self.db.execute(_SELECT + " ORDER BY s.id").fetchall()
        else:
            rows = self.db.execute(_SELECT + " WHERE s.channel = ? ORDER BY s.id", [channel.key]).fetchall()
        return [_subscription(row) for row in rows]

    def subscriptions_changed_since(self, version: int) -> SubscriptionChanges:
        """Subscriptions added or changed after `version` (without delivery counts, cheap
        enough for a million rows), and the newest version among all."""
        # First: every version up to this one is committed, so the rows read next hold them all.
        top = self.subscriptions_version()
        with no_collection():  # a million rows: their collections cost as much again as reading them (5.8 s, not 3.3)
            rows = self.db.execute(
                "SELECT id, channel, query, created_by, created_at, version, compiled FROM subscriptions "
                "WHERE version > ?", [version]).fetchall()
            newest = max(max((row[5] for row in rows), default=version), top)
            # A million rows: channels and creation times are shared by many, made once each.
            channels: dict[str, ChannelRef] = {}
            times: dict[str, datetime] = {}
            found = []
            for sub_id, key, query, created_by, created_at, _, compiled in rows:
                channel = channels.get(key)
                if channel is None:
                    channel = channels[key] = ChannelRef.from_key(key)
                moment = times.get(created_at)
                if moment is None:
                    moment = times[created_at] = datetime.fromisoformat(created_at)
                found.append(stored_subscription(sub_id, channel, query, created_by, moment, 0, compiled))
        return SubscriptionChanges(found, newest)

    def save_compiled_queries(self, compiled: dict[int, tuple[str, bytes]]) -> None:
        """Keep the compiled form of these subscriptions' queries (the matching engine's, for
        those whose stored one was missing or of an older version). Versions are left as
        they are: nothing the engine has to pick up changed. Only where the query is still
        the one compiled (a command may have changed it since the engine read it)."""
        if not compiled:
            return
        with immediate(self.db):
            self.db.conn.executemany("UPDATE subscriptions SET compiled = ? WHERE id = ? AND query = ?",
                                     [(blob, sub_id, query) for sub_id, (query, blob) in compiled.items()])

    def subscriptions_created_by(self, ids: list[int], moment: datetime, upto: int | None = None) -> set[int]:
        """Those of `ids` that exist and existed at `moment` (with `upto`: whose id is at most `upto`)."""
        if not ids:
            return set()
        # One row (a JSON array), so one step: the poller's writer thread calls this while its
        # worker matches, and every row fetched would wait for the GIL (see enqueue_many).
        condition, bound = ("id <= ?", upto) if upto is not None else ("created_at <= ?", iso(moment))
        row = self.db.execute(
            f"""SELECT json_group_array(id) FROM subscriptions
                 WHERE {condition} AND id IN (SELECT value FROM json_each(?))""",
            [bound, json.dumps(ids)],
        ).fetchone()
        return set(json.loads(row[0]))

    def newest_subscription_id(self) -> int:
        """The highest subscription id ever given (ids grow in the order subscriptions are committed)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'subscriptions'").fetchone()
        return int(row[0]) if row else 0

    def subscriptions_version(self) -> int:
        """The newest subscription version (grows with every subscription added, changed or
        removed: m029's trigger for a removal)."""
        return self.db.execute(f"SELECT {NEWEST_VERSION}").fetchone()[0]

    def subscription_ids(self) -> set[int]:
        # One row (a JSON array), not a row an id: 100,000 ids in 20 ms rather than 40.
        return set(json.loads(self.db.execute("SELECT json_group_array(id) FROM subscriptions").fetchone()[0]))

    def subscription_queries(self, upto: int) -> list[StoredQuery]:
        rows = self.db.execute("SELECT id, query, channel FROM subscriptions WHERE version <= ?", [upto]).fetchall()
        return list(map(StoredQuery._make, rows))

    def change_subscription_query(
        self, channel: ChannelRef, subscription_id: int, query: str, *, expected: str | None = None
    ) -> Subscription | None:
        """Give a subscription of this channel a new query (keeping its id); None if it has no such id.

        With `expected`, only if its query is still that one (the caller built the new
        query from it). Nothing changes, and the subscription is returned as it is, when it
        is not, or when another subscription of the channel already has the new query.
        """
        with immediate(self.db):
            found = self.get_subscription(subscription_id)
            if found is None or found.channel != channel:
                return None
            if expected is not None and found.query != expected:
                return found
            if self.db.execute("SELECT 1 FROM subscriptions WHERE channel = ? AND query = ? AND id != ?",
                               [channel.key, query, subscription_id]).fetchone():
                return found
            self.db.execute(_BUMP_VERSION)
            self.db.execute(
                f"UPDATE subscriptions SET query = ?, compiled = ?, version = {_NEXT_VERSION} WHERE id = ?",
                [query, _compiled(query), subscription_id])
            self._requery_pending(channel, subscription_id, query)
            return self.get_subscription(subscription_id)

    def remove_all_subscriptions(self, channel: ChannelRef) -> list[Subscription]:
        with immediate(self.db):
            removed = self.subscriptions(channel)
            self.db.execute("DELETE FROM subscriptions WHERE channel = ?", [channel.key])
            self._settle_unsubscribed(channel, {sub.id for sub in removed})
            return removed

    def count_subscriptions(self, channel: ChannelRef) -> int:
        return self.db.execute("SELECT count(*) FROM subscriptions WHERE channel = ?", [channel.key]).fetchone()[0]


def _compiled(query: str) -> bytes | None:
    """The matching engine's compiled form of a query; None if it does not parse (the
    engine then parses it, and logs and skips it, itself)."""
    try:
        return compile_query(query)
    except QueryError:
        return None


def _subscription(row) -> Subscription:
    return Subscription(
        id=row[0],
        channel=ChannelRef.from_key(row[1]),
        query=row[2],
        created_by=row[3],
        created_at=datetime.fromisoformat(row[4]),  # NOT NULL
        delivered=row[5],
    )


def refacted_rows(rows: Iterable[tuple[int, object]],
                  refact: Callable[[int, dict], dict | None]) -> tuple[list[tuple[str, int, int]], list[int]]:
    """A channel's pending deliveries (id, `matched` facts as JSON text or as read from jsonb)
    after `refact` (delivery id, one fact -> the fact, another in its place, or None to drop
    it): those whose facts changed and some remain, with their facts and strength rewritten
    ((matched JSON, strength, id) each), and those left with none (their ids: nothing of the
    channel's matches them any more; settled 'unsubscribed', never posted). Deliveries whose
    facts `refact` keeps as they are (a recommendation's, say) are in neither."""
    rewritten: list[tuple[str, int, int]] = []
    settled: list[int] = []
    for delivery_id, matched in rows:
        try:
            facts = json.loads(matched) if isinstance(matched, (str, bytes)) else matched
        except ValueError:
            continue
        if not isinstance(facts, list):
            continue
        kept: list = []
        for fact in facts:
            new = refact(delivery_id, fact) if isinstance(fact, dict) else fact
            if new is not None:
                kept.append(new)
        if kept == facts:
            continue
        if not kept:
            settled.append(delivery_id)
            continue
        terms = {t for f in kept if isinstance(f, dict) for t in f.get("terms") or () if isinstance(t, str)}
        rewritten.append((json.dumps(kept), terms_strength(terms), delivery_id))
    return rewritten, settled


def unsubscribed_rows(rows: Iterable[tuple[int, object]],
                      removed: set[int]) -> tuple[list[tuple[str, int, int]], list[int]]:
    """`refacted_rows` once the subscriptions `removed` are gone: their facts dropped."""
    return refacted_rows(rows, lambda _delivery, fact: None if fact.get("id") in removed else fact)


def requeried(subscription_id: int, query: str, paper_of: Callable[[int], Paper | None]
              ) -> Callable[[int, dict], dict | None] | None:
    """For `refacted_rows`, once subscription `subscription_id` has the query `query`: its
    fact in a delivery is the new query's, with the terms it matches in the delivery's paper
    (`paper_of(delivery id)`), or dropped if the new query does not match it (a `mute`);
    None for a `like:` query (matched by the recommender, not here) or one that does not parse."""
    if "like:" in query:
        return None
    try:
        node = parse_query(query)
    except QueryError:
        return None

    def refact(delivery_id: int, fact: dict) -> dict | None:
        if fact.get("id") != subscription_id:
            return fact
        paper = paper_of(delivery_id)
        hits = None if paper is None else evaluate(node, PaperView(paper))
        return None if hits is None else {"id": subscription_id, "query": query, "terms": list(hits)}

    return refact
