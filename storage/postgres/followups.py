"""Follow-ups in the thread, on PostgreSQL: the delivery side (storage/followups.py is the SQLite
one; the papers' side queues them inside add_papers).

A follow-up is sent like a delivery: claimed (one UPDATE ... WHERE status = 'pending', so a
row goes to exactly one claimer however many processes deliver), sent, marked; the claims
and the recovery of claims a crash left are together at the end of the class.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from bot.models import ChannelRef, FollowUp, ThreadRef

from ..followups import DISMISSED, NOT_RELEVANT_THERE  # the same SQL on both
from .db import Database, from_db, utc
from .deliveries import no_nul

_COLUMNS = "f.id, d.paper_id, d.channel, d.message_id, f.kind, f.value, f.url, f.attempts, f.claimed_at"
# The card's message showed this paper alone (as storage/followups.py _ALONE): a digest's
# message (several deliveries with its id) gets no replies.
ALONE = ("NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.channel = d.channel AND o.message_id = d.message_id"
         " AND o.id <> d.id)")


class FollowUpsMixin:
    db: Database
    if TYPE_CHECKING:
        def live_sender_id(self) -> str: ...  # RolesMixin's: this store's id, its liveness lock held
        def _reader(self) -> AbstractContextManager[Database]: ...  # PgStore's: this thread's connection

    def followups_enabled(self, channel: ChannelRef) -> bool:
        enabled = self.db.scalar("SELECT enabled FROM channel_followups WHERE channel = %s", [channel.key])
        return True if enabled is None else bool(enabled)

    def set_followups(self, channel: ChannelRef, enabled: bool, now: datetime) -> bool:
        with self.db.transaction():
            self.db.lock(f"followups {channel.key}")  # what it was before: two turning it take turns
            before = self.followups_enabled(channel)
            self.db.execute(
                """INSERT INTO channel_followups (channel, enabled, updated_at) VALUES (%s, %s, %s)
                   ON CONFLICT (channel) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at""",
                [channel.key, enabled, utc(now)],
            )
        return before

    def due_followups(self, now: datetime, limit: int) -> list[FollowUp]:
        # A read, every sweep; a write only when something is to be settled as skipped.
        rows = self.db.all(
            f"""SELECT {_COLUMNS}, d.status, coalesce(cf.enabled, true), {ALONE}, {DISMISSED}
                  FROM followups f JOIN deliveries d ON d.id = f.delivery_id
                  LEFT JOIN channels c ON c.channel = d.channel
                  LEFT JOIN channel_followups cf ON cf.channel = d.channel
                 WHERE f.status = 'pending' AND f.next_attempt_at <= %s AND NOT coalesce(c.paused, false)
                   AND d.status <> 'sending'
                 ORDER BY f.id LIMIT %s""",
            [utc(now), limit],
        )
        due: list[FollowUp] = []
        skipped_ids: list[int] = []
        skipped_errors: list[str] = []
        for row in rows:
            status, enabled, alone, dismissed = row[9], row[10], row[11], row[12]
            if not enabled:
                skipped_ids.append(row[0])
                skipped_errors.append(f"follow-ups turned off in {row[2]}")
            elif status != "sent" or not row[3] or not alone:
                skipped_ids.append(row[0])
                skipped_errors.append(f"its card was not posted alone (delivery {status})")
            elif dismissed:
                skipped_ids.append(row[0])
                skipped_errors.append(NOT_RELEVANT_THERE)
            else:
                due.append(_followup(row))
        if skipped_ids:
            self.db.execute(  # one statement: one transaction
                """UPDATE followups f SET status = 'skipped', error = s.error
                     FROM unnest(%s::bigint[], %s::text[]) AS s(id, error)
                    WHERE f.id = s.id AND f.status = 'pending'""",
                [skipped_ids, skipped_errors],
            )
        return due

    def mark_followup_sent(self, followup_id: int, message_id: str | None, now: datetime) -> None:
        with self._reader() as db:  # any thread: on its own connection
            db.execute(
                "UPDATE followups SET status = 'sent', message_id = %s, sent_at = %s, error = NULL WHERE id = %s",
                [message_id, utc(now), followup_id])

    def reschedule_followup(self, followup_id: int, error: str, retry_at: datetime) -> None:
        with self._reader() as db:  # any thread
            db.execute("UPDATE followups SET status = 'pending', error = %s, next_attempt_at = %s WHERE id = %s",
                       [no_nul(error[:500]), utc(retry_at), followup_id])

    def give_up_followup(self, followup_id: int, error: str) -> None:
        with self._reader() as db:  # any thread
            db.execute("UPDATE followups SET status = 'failed', error = %s WHERE id = %s",
                       [no_nul(error[:500]), followup_id])

    # ---- claims, and the recovery of claims a crash left ------------------------------------

    def claim_followup(self, followup_id: int, now: datetime) -> bool:
        """pending -> sending, for exactly one claimer, named in `claimed_by` (as claim_delivery:
        FOR UPDATE SKIP LOCKED). Any thread, on its own connection."""
        sender = self.live_sender_id()
        with self._reader() as db:
            row = db.one(
                """UPDATE followups SET status = 'sending', attempts = attempts + 1, claimed_at = %s, claimed_by = %s
                    WHERE id = (SELECT id FROM followups WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED)
                   RETURNING id""",
                [utc(now), sender, followup_id],
            )
        return row is not None

    def unfinished_followups(self) -> list[FollowUp]:
        rows = self.db.all(
            f"""SELECT {_COLUMNS}, f.claimed_by FROM followups f JOIN deliveries d ON d.id = f.delivery_id
                WHERE f.status = 'sending' ORDER BY f.id""")
        return [replace(_followup(row), claimed_by=row[9]) for row in rows]

    def release_followup(self, followup_id: int) -> None:
        with self._reader() as db:  # any thread
            db.execute("UPDATE followups SET status = 'pending', attempts = greatest(attempts - 1, 0) "
                       "WHERE id = %s AND status = 'sending'", [followup_id])


def _followup(row: tuple) -> FollowUp:
    return FollowUp(id=row[0], paper_id=row[1], thread=ThreadRef(ChannelRef.from_key(row[2]), row[3] or ""),
                    kind=row[4], value=row[5], url=row[6], attempts=row[7], claimed_at=from_db(row[8]))
