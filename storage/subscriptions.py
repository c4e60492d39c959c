"""Per-channel subscriptions."""

from __future__ import annotations

from datetime import datetime

from sqlite_utils import Database

from bot.models import ChannelRef, Subscription

from .db import iso, parse_iso

_SELECT = """
    SELECT s.id, s.channel, s.query, s.created_by, s.created_at,
           (SELECT count(*) FROM delivery_matches m JOIN deliveries d ON d.id = m.delivery_id
             WHERE m.subscription_id = s.id AND d.status = 'sent') AS delivered
      FROM subscriptions s
"""


class SubscriptionsMixin:
    db: Database

    def add_subscription(
        self, channel: ChannelRef, query: str, user_id: str, now: datetime
    ) -> tuple[Subscription, bool]:
        """Subscribe `channel` to `query`; returns (subscription, created). Idempotent per channel."""
        with self.db.atomic():
            existing = self.db.execute(
                "SELECT id FROM subscriptions WHERE channel = ? AND query = ?", [channel.key, query]
            ).fetchone()
            if existing:
                return self.get_subscription(existing[0]), False
            cursor = self.db.execute(
                "INSERT INTO subscriptions (channel, query, created_by, created_at) VALUES (?, ?, ?, ?)",
                [channel.key, query, user_id, iso(now)],
            )
            return self.get_subscription(cursor.lastrowid), True

    def get_subscription(self, subscription_id: int) -> Subscription | None:
        row = self.db.execute(_SELECT + " WHERE s.id = ?", [subscription_id]).fetchone()
        return _subscription(row) if row else None

    def remove_subscription(self, channel: ChannelRef, subscription_id: int) -> Subscription | None:
        """Remove a subscription of this channel; None when the channel has no such id."""
        with self.db.atomic():
            found = self.get_subscription(subscription_id)
            if found is None or found.channel != channel:
                return None
            self.db.execute("DELETE FROM subscriptions WHERE id = ?", [subscription_id])
            return found

    def subscriptions(self, channel: ChannelRef | None = None) -> list[Subscription]:
        if channel is None:
            rows = self.db.execute(_SELECT + " ORDER BY s.id").fetchall()
        else:
            rows = self.db.execute(_SELECT + " WHERE s.channel = ? ORDER BY s.id", [channel.key]).fetchall()
        return [_subscription(row) for row in rows]

    def subscriptions_for_matching(self, ids: set[int] | None = None) -> list[Subscription]:
        """Subscriptions without their delivery counts (cheap enough for a million rows)."""
        sql = "SELECT id, channel, query, created_by, created_at, 0 FROM subscriptions"
        if ids is None:
            return [_subscription(row) for row in self.db.execute(sql)]
        found: list[Subscription] = []
        wanted = sorted(ids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self.db.execute(f"{sql} WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            found += [_subscription(row) for row in rows]
        return found

    def subscription_ids(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT id FROM subscriptions")}

    def remove_all_subscriptions(self, channel: ChannelRef) -> list[Subscription]:
        with self.db.atomic():
            removed = self.subscriptions(channel)
            self.db.execute("DELETE FROM subscriptions WHERE channel = ?", [channel.key])
            return removed

    def count_subscriptions(self, channel: ChannelRef) -> int:
        return self.db.execute("SELECT count(*) FROM subscriptions WHERE channel = ?", [channel.key]).fetchone()[0]


def _subscription(row) -> Subscription:
    platform, _, channel_id = row[1].partition(":")
    return Subscription(
        id=row[0],
        channel=ChannelRef(platform, channel_id),
        query=row[2],
        created_by=row[3],
        created_at=parse_iso(row[4]),
        delivered=row[5],
    )
