"""Feedback on posted papers (Save, Not relevant), reading lists, and the weekly "most saved" digest."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlite_utils import Database

from bot.models import ChannelFeedback, ChannelRef, Feedback, Match, MostSavedSchedule, Paper, SavedPaper

from .db import immediate, iso, parse_iso, write
from .deliveries import _matched


class FeedbackMixin:
    db: Database

    if TYPE_CHECKING:
        def get_paper(self, paper_id: str) -> Paper | None: ...  # PapersMixin's

    def record_feedback(self, user_id: str, channel: ChannelRef, paper_id: str, kind: str,
                        now: datetime) -> Feedback:
        with immediate(self.db):
            cursor = self.db.execute(
                """INSERT OR IGNORE INTO feedback (user_id, channel, paper_id, kind, created_at)
                   VALUES (?, ?, ?, ?, ?)""", [user_id, channel.key, paper_id, kind, iso(now)])
            row = self.db.execute(
                "SELECT created_at FROM feedback WHERE user_id = ? AND channel = ? AND paper_id = ? AND kind = ?",
                [user_id, channel.key, paper_id, kind]).fetchone()
        at = parse_iso(row[0])
        assert at is not None  # NOT NULL
        return Feedback(user_id, channel, paper_id, kind, at, created=cursor.rowcount > 0)

    def remove_feedback(self, user_id: str, channel: ChannelRef | None, paper_id: str, kind: str) -> int:
        if channel is None:
            cursor = write(self.db, "DELETE FROM feedback WHERE user_id = ? AND paper_id = ? AND kind = ?",
                           [user_id, paper_id, kind])
        else:
            cursor = write(self.db, """DELETE FROM feedback WHERE user_id = ? AND channel = ? AND paper_id = ?
                                       AND kind = ?""", [user_id, channel.key, paper_id, kind])
        return cursor.rowcount

    def saved_papers(self, *, channel: ChannelRef | None = None, user_id: str | None = None,
                     platform: str | None = None, since: datetime | None = None, limit: int = 20,
                     most_saved: bool = False) -> list[SavedPaper]:
        where, params = ["kind = 'save'"], []
        if channel is not None:
            where.append("channel = ?")
            params.append(channel.key)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if platform is not None:
            where.append("channel LIKE ?")
            params.append(f"{platform}:%")
        if since is not None:
            where.append("created_at >= ?")
            params.append(iso(since))
        order = "saves DESC, saved_at DESC, paper_id" if most_saved else "saved_at DESC, paper_id"
        rows = self.db.execute(
            f"""SELECT paper_id, max(created_at) AS saved_at, count(DISTINCT user_id) AS saves FROM feedback
                WHERE {' AND '.join(where)} GROUP BY paper_id ORDER BY {order} LIMIT ?""",
            [*params, limit]).fetchall()
        found = []
        for paper_id, saved_at, saves in rows:
            paper = self.get_paper(paper_id)
            at = parse_iso(saved_at)
            if paper is not None and at is not None:
                found.append(SavedPaper(paper, at, saves))
        return found

    def channel_feedback(self, channel: ChannelRef, limit: int = 1000) -> ChannelFeedback:
        def ids(kind: str) -> tuple[str, ...]:
            rows = self.db.execute(
                """SELECT paper_id FROM feedback WHERE channel = ? AND kind = ?
                   GROUP BY paper_id ORDER BY max(created_at) DESC, paper_id LIMIT ?""", [channel.key, kind, limit])
            return tuple(row[0] for row in rows)

        return ChannelFeedback(saved=ids("save"), not_relevant=ids("not_relevant"))

    def delivered_matches(self, channel: ChannelRef, paper_id: str) -> list[Match]:
        row = self.db.execute("SELECT matched FROM deliveries WHERE channel = ? AND paper_id = ?",
                              [channel.key, paper_id]).fetchone()
        return list(_matched(channel, row[0])) if row else []

    # ---- the weekly "most saved" digest ---------------------------------------------------------

    def most_saved_schedule(self, channel: ChannelRef) -> MostSavedSchedule | None:
        row = self.db.execute("SELECT channel, day, time, last_sent_at FROM most_saved_digests WHERE channel = ?",
                              [channel.key]).fetchone()
        return _schedule(row) if row else None

    def set_most_saved_schedule(self, channel: ChannelRef, schedule: MostSavedSchedule | None,
                                now: datetime) -> MostSavedSchedule | None:
        with immediate(self.db):
            before = self.most_saved_schedule(channel)
            if schedule is None:
                self.db.execute("DELETE FROM most_saved_digests WHERE channel = ?", [channel.key])
            else:
                since = schedule.last_sent_at or now
                self.db.execute(
                    """INSERT INTO most_saved_digests (channel, day, time, last_sent_at, updated_at)
                       VALUES (?, ?, ?, ?, ?) ON CONFLICT(channel) DO UPDATE SET day = excluded.day,
                       time = excluded.time, last_sent_at = excluded.last_sent_at, updated_at = excluded.updated_at""",
                    [channel.key, schedule.day, schedule.time, iso(since), iso(now)])
            return before

    def most_saved_schedules(self) -> list[MostSavedSchedule]:
        rows = self.db.execute("SELECT channel, day, time, last_sent_at FROM most_saved_digests ORDER BY channel")
        return [_schedule(row) for row in rows]

    def claim_most_saved(self, channel: ChannelRef, slot: datetime) -> bool:
        cursor = write(self.db, """UPDATE most_saved_digests SET last_sent_at = ?
                                   WHERE channel = ? AND (last_sent_at IS NULL OR last_sent_at < ?)""",
                       [iso(slot), channel.key, iso(slot)])
        return cursor.rowcount > 0

    def unclaim_most_saved(self, channel: ChannelRef, slot: datetime, previous: datetime) -> bool:
        cursor = write(self.db, "UPDATE most_saved_digests SET last_sent_at = ? WHERE channel = ? AND last_sent_at = ?",
                       [iso(previous), channel.key, iso(slot)])
        return cursor.rowcount > 0


def _schedule(row) -> MostSavedSchedule:
    return MostSavedSchedule(ChannelRef.from_key(row[0]), row[1], row[2], parse_iso(row[3]))
