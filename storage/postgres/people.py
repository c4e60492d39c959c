"""People: who subscribed with --me (their cards mention them), and a person's own subscriptions;
on PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from psycopg import errors as pg_errors

from bot.models import Subscription

from .db import Database, utc
from .subscriptions import _SELECT, _subscription


class PeopleMixin:
    db: Database

    def add_subscriber(self, subscription_id: int, user_id: str, now: datetime) -> bool:
        """Mention `user_id` on the subscription's cards; False if they were already (or it is gone)."""
        try:
            with self.db.transaction():
                cursor = self.db.execute(
                    """INSERT INTO subscription_people (subscription_id, user_id, created_at)
                       SELECT id, %s, %s FROM subscriptions WHERE id = %s ON CONFLICT DO NOTHING""",
                    [user_id, utc(now), subscription_id])
                return cursor.rowcount > 0
        except pg_errors.ForeignKeyViolation:  # removed by another process between the SELECT and the check
            return False

    def remove_subscriber(self, subscription_id: int, user_id: str) -> bool:
        with self.db.transaction():
            cursor = self.db.execute("DELETE FROM subscription_people WHERE subscription_id = %s AND user_id = %s",
                                     [subscription_id, user_id])
            return cursor.rowcount > 0

    def subscribers(self, subscription_ids: list[int]) -> list[str]:
        if not subscription_ids:
            return []
        rows = self.db.all(
            """SELECT user_id FROM subscription_people WHERE subscription_id = ANY(%s)
               GROUP BY user_id ORDER BY min(created_at), user_id COLLATE "C" """, [list(subscription_ids)])
        return [row[0] for row in rows]

    def own_subscriptions(self, platform: str, user_id: str, limit: int = 100) -> list[Subscription]:
        # Both sides by index (subscriptions_created_by, subscription_people_user): never a scan
        # of every subscription, however many channels there are.
        rows = self.db.all(
            _SELECT + """ WHERE id IN (SELECT id FROM subscriptions WHERE created_by = %s
                                       UNION SELECT subscription_id FROM subscription_people WHERE user_id = %s)
                            AND starts_with(channel, %s) ORDER BY id LIMIT %s""",
            [user_id, user_id, f"{platform}:", limit])
        return [_subscription(row) for row in rows]
