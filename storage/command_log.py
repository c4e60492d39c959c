"""Who ran a command when: the per-user rate limit, kept in the database so that every
process (the running bot and each `papers-bot command`) counts the same commands."""

from __future__ import annotations

from datetime import datetime

from sqlite_utils import Database

from .db import immediate

WINDOW_SECONDS = 60.0


class CommandLogMixin:
    db: Database

    def record_command(self, user: str, now: datetime, limit: int) -> float:
        """Count a command by `user` unless they ran `limit` in the last minute.

        Returns 0 when counted, else the seconds until the oldest of those leaves the
        window (nothing is recorded then). Rows older than the window are pruned.
        """
        moment = now.timestamp()
        start = moment - WINDOW_SECONDS
        with immediate(self.db):
            self.db.execute("DELETE FROM command_log WHERE at <= ?", [start])
            rows = self.db.execute(
                "SELECT at FROM command_log WHERE user = ? AND at > ? ORDER BY at LIMIT ?", [user, start, limit]
            ).fetchall()
            if len(rows) >= limit:
                return max(rows[0][0] + WINDOW_SECONDS - moment, 0.001)
            self.db.execute("INSERT INTO command_log (user, at) VALUES (?, ?)", [user, moment])
            return 0.0
