"""Who ran a command when: the per-user rate limit, kept in the database so that every
process (the running bot and each `papers-bot command`) counts the same commands."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlite_utils import Database

from .db import immediate

WINDOW_SECONDS = 60.0


class CommandLogMixin:
    db: Database
    if TYPE_CHECKING:
        def _thread_db(self) -> AbstractContextManager[Database]: ...  # Store's: this thread's, to write

    def record_command(self, user: str, now: datetime, limit: int) -> float:
        """Count a command by `user` unless they ran `limit` in the last minute.

        Returns 0 when counted, else the seconds until the oldest of those leaves the
        window (nothing is recorded then). Rows older than the window are pruned. Any
        thread: on a connection of its own off the store's thread.
        """
        moment = now.timestamp()
        start = moment - WINDOW_SECONDS
        with self._thread_db() as db, immediate(db):
            db.execute("DELETE FROM command_log WHERE at <= ?", [start])
            rows = db.execute(
                "SELECT at FROM command_log WHERE user = ? AND at > ? ORDER BY at LIMIT ?", [user, start, limit]
            ).fetchall()
            if len(rows) >= limit:
                return max(rows[0][0] + WINDOW_SECONDS - moment, 0.001)
            db.execute("INSERT INTO command_log (user, at) VALUES (?, ?)", [user, moment])
            return 0.0
