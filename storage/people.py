"""People: who subscribed with --me (their cards mention them), and a person's own subscriptions."""

from __future__ import annotations

from datetime import datetime

from sqlite_utils import Database

from bot.models import Subscription

from .db import iso, write
from .subscriptions import _SELECT, _subscription


class PeopleMixin:
    db: Database

    def add_subscriber(self, subscription_id: int, user_id: str, now: datetime) -> bool:
        """Mention `user_id` on the subscription's cards; False if they were already (or it is gone)."""
        cursor = write(self.db, """INSERT OR IGNORE INTO subscription_people (subscription_id, user_id, created_at)
                                   SELECT id, ?, ? FROM subscriptions WHERE id = ?""",
                       [user_id, iso(now), subscription_id])
        return cursor.rowcount > 0

    def remove_subscriber(self, subscription_id: int, user_id: str) -> bool:
        cursor = write(self.db, "DELETE FROM subscription_people WHERE subscription_id = ? AND user_id = ?",
                       [subscription_id, user_id])
        return cursor.rowcount > 0

    def subscribers(self, subscription_ids: list[int]) -> list[str]:
        if not subscription_ids:
            return []
        marks = ", ".join("?" * len(subscription_ids))
        rows = self.db.execute(
            f"""SELECT user_id FROM subscription_people WHERE subscription_id IN ({marks})
                GROUP BY user_id ORDER BY min(created_at), user_id""", list(subscription_ids))
        return [row[0] for row in rows]

    def own_subscriptions(self, platform: str, user_id: str, limit: int = 100) -> list[Subscription]:
        # Both sides by index (subscriptions_created_by, subscription_people_user): never a scan
        # of every subscription, however many channels there are.
        rows = self.db.execute(
            _SELECT + """ WHERE s.id IN (SELECT id FROM subscriptions WHERE created_by = ?
                                         UNION SELECT subscription_id FROM subscription_people WHERE user_id = ?)
                            AND s.channel LIKE ? ORDER BY s.id LIMIT ?""",
            [user_id, user_id, f"{platform}:%", limit]).fetchall()
        return [_subscription(row) for row in rows]
