"""Feedback on posted papers (Save, Not relevant), reading lists, and the weekly "most saved"
digest; on PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.models import ChannelFeedback, ChannelRef, Feedback, Match, MostSavedSchedule, Paper, SavedPaper

from .db import Database, from_db, utc


class FeedbackMixin:
    db: Database

    if TYPE_CHECKING:
        def get_paper(self, paper_id: str) -> Paper | None: ...  # PapersMixin's

    def record_feedback(self, user_id: str, channel: ChannelRef, paper_id: str, kind: str,
                        now: datetime) -> Feedback:
        with self.db.transaction():
            key = [user_id, channel.key, paper_id, kind]
            row = self.db.one(
                """INSERT INTO feedback (user_id, channel, paper_id, kind, created_at) VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT DO NOTHING RETURNING created_at""", [*key, utc(now)])
            created = row is not None
            if row is None:  # given before (by this press or another process's): its first time
                row = self.db.one("""SELECT created_at FROM feedback
                                     WHERE user_id = %s AND channel = %s AND paper_id = %s AND kind = %s""", key)
        at = from_db(row[0]) if row else None
        assert at is not None  # NOT NULL, and no one deletes it between the insert and the read
        return Feedback(user_id, channel, paper_id, kind, at, created=created)

    def remove_feedback(self, user_id: str, channel: ChannelRef | None, paper_id: str, kind: str) -> int:
        with self.db.transaction():
            if channel is None:
                cursor = self.db.execute("DELETE FROM feedback WHERE user_id = %s AND paper_id = %s AND kind = %s",
                                         [user_id, paper_id, kind])
            else:
                cursor = self.db.execute(
                    "DELETE FROM feedback WHERE user_id = %s AND channel = %s AND paper_id = %s AND kind = %s",
                    [user_id, channel.key, paper_id, kind])
            return cursor.rowcount

    def saved_papers(self, *, channel: ChannelRef | None = None, user_id: str | None = None,
                     platform: str | None = None, since: datetime | None = None, limit: int = 20,
                     most_saved: bool = False) -> list[SavedPaper]:
        # Every filter is in the SQL; a missing one is a NULL that lets every row through.
        order = ("saves DESC, saved_at DESC, paper_id COLLATE \"C\"" if most_saved
                 else "saved_at DESC, paper_id COLLATE \"C\"")
        params: dict[str, Any] = {"channel": channel.key if channel else None, "user": user_id,
                                  "platform": f"{platform}:" if platform else None,
                                  "since": utc(since) if since else None, "limit": limit}
        rows = self.db.all(
            """SELECT paper_id, max(created_at) AS saved_at, count(DISTINCT user_id) AS saves FROM feedback
                WHERE kind = 'save'
                  AND (%(channel)s::text IS NULL OR channel = %(channel)s)
                  AND (%(user)s::text IS NULL OR user_id = %(user)s)
                  AND (%(platform)s::text IS NULL OR starts_with(channel, %(platform)s))
                  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
                GROUP BY paper_id ORDER BY """ + order + " LIMIT %(limit)s", params)
        found = []
        for paper_id, saved_at, saves in rows:
            paper = self.get_paper(paper_id)
            at = from_db(saved_at)
            if paper is not None and at is not None:
                found.append(SavedPaper(paper, at, saves))
        return found

    def channel_feedback(self, channel: ChannelRef, limit: int = 1000) -> ChannelFeedback:
        def ids(kind: str) -> tuple[str, ...]:
            rows = self.db.all(
                """SELECT paper_id FROM feedback WHERE channel = %s AND kind = %s
                   GROUP BY paper_id ORDER BY max(created_at) DESC, paper_id COLLATE "C" LIMIT %s""",
                [channel.key, kind, limit])
            return tuple(row[0] for row in rows)

        return ChannelFeedback(saved=ids("save"), not_relevant=ids("not_relevant"))

    def delivered_matches(self, channel: ChannelRef, paper_id: str) -> list[Match]:
        matched = self.db.scalar("SELECT matched FROM deliveries WHERE channel = %s AND paper_id = %s",
                                 [channel.key, paper_id])
        return list(_matches(channel, matched))

    # ---- the weekly "most saved" digest ---------------------------------------------------------

    def most_saved_schedule(self, channel: ChannelRef) -> MostSavedSchedule | None:
        row = self.db.one("SELECT channel, day, time, last_sent_at FROM most_saved_digests WHERE channel = %s",
                          [channel.key])
        return _schedule(row) if row else None

    def set_most_saved_schedule(self, channel: ChannelRef, schedule: MostSavedSchedule | None,
                                now: datetime) -> MostSavedSchedule | None:
        with self.db.transaction():
            # Returns what it replaced: two changes of one channel take turns (the row may not exist yet).
            self.db.lock(f"most_saved {channel.key}")
            before = self.most_saved_schedule(channel)
            if schedule is None:
                self.db.execute("DELETE FROM most_saved_digests WHERE channel = %s", [channel.key])
            else:
                since = schedule.last_sent_at or now
                self.db.execute(
                    """INSERT INTO most_saved_digests (channel, day, time, last_sent_at, updated_at)
                       VALUES (%s, %s, %s, %s, %s) ON CONFLICT (channel) DO UPDATE SET day = excluded.day,
                       time = excluded.time, last_sent_at = excluded.last_sent_at, updated_at = excluded.updated_at""",
                    [channel.key, schedule.day, schedule.time, utc(since), utc(now)])
            return before

    def most_saved_schedules(self) -> list[MostSavedSchedule]:
        rows = self.db.all('SELECT channel, day, time, last_sent_at FROM most_saved_digests '
                           'ORDER BY channel COLLATE "C"')
        return [_schedule(row) for row in rows]

    def claim_most_saved(self, channel: ChannelRef, slot: datetime) -> bool:
        # One statement: the row lock makes a second claimer wait for the first's commit, then
        # check its condition again on the row as the first left it (READ COMMITTED), and fail.
        with self.db.transaction():
            cursor = self.db.execute(
                """UPDATE most_saved_digests SET last_sent_at = %s
                   WHERE channel = %s AND (last_sent_at IS NULL OR last_sent_at < %s)""",
                [utc(slot), channel.key, utc(slot)])
            return cursor.rowcount > 0

    def unclaim_most_saved(self, channel: ChannelRef, slot: datetime, previous: datetime) -> bool:
        with self.db.transaction():
            cursor = self.db.execute(
                "UPDATE most_saved_digests SET last_sent_at = %s WHERE channel = %s AND last_sent_at = %s",
                [utc(previous), channel.key, utc(slot)])
            return cursor.rowcount > 0


def _matches(channel: ChannelRef, matched: object) -> tuple[Match, ...]:
    """A delivery's `matched` (jsonb: a list of {id, query, terms}) as Matches; () if it is not that."""
    if not isinstance(matched, list):
        return ()
    try:
        return tuple(Match(int(m["id"]), channel, str(m["query"]), tuple(map(str, m["terms"]))) for m in matched)
    except (ValueError, TypeError, KeyError):  # not written as the outbox writes it: the card just says no reason
        return ()


def _schedule(row: tuple) -> MostSavedSchedule:
    return MostSavedSchedule(ChannelRef.from_key(row[0]), row[1], row[2], from_db(row[3]))
