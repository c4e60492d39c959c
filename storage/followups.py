"""Follow-ups in the thread: a posted paper's news, queued when a listing brings it, sent
as one reply in its card's thread.

Found where papers are stored (`PapersMixin.add_papers` hands each stored paper's before
and after here, in its transaction): code released (github unset -> set), a higher arXiv
version, an upvote threshold crossed. Each event becomes one row per card that posted the
paper (`followups`, UNIQUE per card and event: never twice), sent like a delivery: claimed,
sent, marked; a crash mid-send is settled by the sender lease's holder.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlite_utils import Database

from bot.models import ChannelRef, FollowUp, Paper, ThreadRef

from .db import immediate, iso, parse_iso, write

UPVOTE_THRESHOLDS = (50, 100, 200)
# Cards posted longer ago get no follow-ups: arXiv announces new versions of years-old
# papers every day, and a reply in a thread nobody looks at any more is noise.
FOLLOWUP_WINDOW = timedelta(days=60)

_COLUMNS = "f.id, d.paper_id, d.channel, d.message_id, f.kind, f.value, f.url, f.attempts, f.claimed_at"
# The card's message showed this paper alone: a digest's (one message, several papers,
# each delivery with its id) gets no replies, which would not say which paper they are about.
_ALONE = ("NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.channel = d.channel AND o.message_id = d.message_id"
          " AND o.id != d.id)")


# Whether someone in the card's channel said its paper was not relevant (the card's button):
# that channel gets no more news of it.
DISMISSED = """EXISTS (SELECT 1 FROM feedback fb WHERE fb.channel = d.channel AND fb.kind = 'not_relevant'
                                              AND fb.paper_id = d.paper_id)"""
NOT_RELEVANT_THERE = "marked not relevant in its channel"


@dataclass(frozen=True)
class StoredState:
    """What of a stored paper its follow-ups compare a new listing with."""

    github: str | None
    version: int | None
    upvotes: int | None


@dataclass(frozen=True)
class Event:
    kind: str
    value: int = 0
    url: str | None = None
    superseded: bool = False  # a lower threshold crossed in the same step: settled, not sent


def paper_events(before: StoredState, paper: Paper) -> list[Event]:
    """The news in `paper` (as just listed) against what was stored. Pure.

    Upvotes crossing several thresholds in one step (30 -> 120) make one reply, for the
    highest; the lower ones are written down as superseded, so that they are never sent
    later (should the count drop below and rise again)."""
    events = []
    if paper.github and not before.github:
        events.append(Event("code", 0, paper.github))
    if paper.version is not None and paper.version > (before.version or 1) and (
            before.version is not None or paper.is_update):
        # No stored version (first listed by Hugging Face, which does not say): only an
        # arXiv replacement announcement is news; a plain listing may show an old version.
        events.append(Event("version", paper.version))
    if paper.upvotes is not None:
        old = before.upvotes or 0
        crossed = [t for t in UPVOTE_THRESHOLDS if old < t <= paper.upvotes]
        events += [Event("upvotes", t, superseded=t != crossed[-1]) for t in crossed]
    return events


class FollowUpsMixin:
    db: Database
    if TYPE_CHECKING:
        def live_sender_id(self) -> str: ...  # RolesMixin's: this store's id, its liveness lock held
        def _thread_db(self) -> AbstractContextManager[Database]: ...  # Store's: this thread's, to write

    def _queue_followups(self, changes: list[tuple[StoredState, Paper]], now: datetime) -> int:
        """Inside add_papers' transaction: queue a reply per event and card. Returns the rows made."""
        made = 0
        stamp, since = iso(now), iso(now - FOLLOWUP_WINDOW)
        for before, paper in changes:
            for event in paper_events(before, paper):
                made += self.db.execute(
                    f"""INSERT OR IGNORE INTO followups (delivery_id, kind, value, url, status, error,
                               next_attempt_at, created_at)
                        SELECT d.id, ?, ?, ?, ?, ?, ?, ? FROM deliveries d
                         WHERE d.paper_id = ? AND d.in_digest = 0
                           AND (d.status = 'sending' OR (d.status = 'sent' AND d.sent_at >= ?
                                AND coalesce(d.message_id, '') != '' AND {_ALONE}))
                           AND coalesce((SELECT enabled FROM channel_followups c WHERE c.channel = d.channel), 1)""",
                    [event.kind, event.value, event.url, "skipped" if event.superseded else "pending",
                     "superseded by a higher threshold" if event.superseded else None, stamp, stamp,
                     paper.id, since],
                ).rowcount
        return made

    def followups_enabled(self, channel: ChannelRef) -> bool:
        row = self.db.execute("SELECT enabled FROM channel_followups WHERE channel = ?", [channel.key]).fetchone()
        return bool(row[0]) if row else True

    def set_followups(self, channel: ChannelRef, enabled: bool, now: datetime) -> bool:
        with immediate(self.db):
            before = self.followups_enabled(channel)
            self.db.execute(
                """INSERT INTO channel_followups (channel, enabled, updated_at) VALUES (?, ?, ?)
                   ON CONFLICT(channel) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at""",
                [channel.key, int(enabled), iso(now)],
            )
        return before

    def due_followups(self, now: datetime, limit: int) -> list[FollowUp]:
        # A read, every sweep; the write lock only when something is to be settled as skipped.
        rows = self.db.execute(
            f"""SELECT {_COLUMNS}, d.status, coalesce(cf.enabled, 1), {_ALONE}, {DISMISSED}
                  FROM followups f JOIN deliveries d ON d.id = f.delivery_id
                  LEFT JOIN channels c ON c.channel = d.channel
                  LEFT JOIN channel_followups cf ON cf.channel = d.channel
                 WHERE f.status = 'pending' AND f.next_attempt_at <= ? AND coalesce(c.paused, 0) = 0
                   AND d.status != 'sending'
                 ORDER BY f.id LIMIT ?""",
            [iso(now), limit],
        ).fetchall()
        due, skipped = [], []
        for row in rows:
            status, enabled, alone, dismissed = row[9], row[10], row[11], row[12]
            if not enabled:
                skipped.append((f"follow-ups turned off in {row[2]}", row[0]))
            elif status != "sent" or not row[3] or not alone:
                skipped.append((f"its card was not posted alone (delivery {status})", row[0]))
            elif dismissed:
                skipped.append((NOT_RELEVANT_THERE, row[0]))
            else:
                due.append(_followup(row))
        if skipped:
            with immediate(self.db):
                self.db.conn.executemany(
                    "UPDATE followups SET status = 'skipped', error = ? WHERE id = ? AND status = 'pending'", skipped)
        return due

    def claim_followup(self, followup_id: int, now: datetime) -> bool:
        """Any thread, as the outcomes below: on the calling thread's connection (`_thread_db`)."""
        sender = self.live_sender_id()
        with self._thread_db() as db:
            cursor = write(
                db,
                """UPDATE followups SET status = 'sending', attempts = attempts + 1, claimed_at = ?, claimed_by = ?
                    WHERE id = ? AND status = 'pending'""",
                [iso(now), sender, followup_id],
            )
            return cursor.rowcount == 1

    def unfinished_followups(self) -> list[FollowUp]:
        rows = self.db.execute(
            f"""SELECT {_COLUMNS}, f.claimed_by FROM followups f JOIN deliveries d ON d.id = f.delivery_id
                WHERE f.status = 'sending' ORDER BY f.id"""
        ).fetchall()
        return [replace(_followup(row), claimed_by=row[9]) for row in rows]

    def release_followup(self, followup_id: int) -> None:
        with self._thread_db() as db:  # any thread
            write(db, "UPDATE followups SET status = 'pending', attempts = max(attempts - 1, 0) "
                      "WHERE id = ? AND status = 'sending'", [followup_id])

    def mark_followup_sent(self, followup_id: int, message_id: str | None, now: datetime) -> None:
        with self._thread_db() as db:  # any thread
            write(db, "UPDATE followups SET status = 'sent', message_id = ?, sent_at = ?, error = NULL WHERE id = ?",
                  [message_id, iso(now), followup_id])

    def reschedule_followup(self, followup_id: int, error: str, retry_at: datetime) -> None:
        with self._thread_db() as db:  # any thread
            write(db, "UPDATE followups SET status = 'pending', error = ?, next_attempt_at = ? WHERE id = ?",
                  [error[:500], iso(retry_at), followup_id])

    def give_up_followup(self, followup_id: int, error: str) -> None:
        with self._thread_db() as db:  # any thread
            write(db, "UPDATE followups SET status = 'failed', error = ? WHERE id = ?", [error[:500], followup_id])


def _followup(row) -> FollowUp:
    return FollowUp(id=row[0], paper_id=row[1], thread=ThreadRef(ChannelRef.from_key(row[2]), row[3] or ""),
                    kind=row[4], value=row[5], url=row[6], attempts=row[7], claimed_at=parse_iso(row[8]))
