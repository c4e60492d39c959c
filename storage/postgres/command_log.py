"""Who ran a command when (the per-user rate limit), on PostgreSQL."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from ..command_log import WINDOW_SECONDS
from .db import Database


class CommandLogMixin:
    db: Database
    if TYPE_CHECKING:
        def _reader(self) -> AbstractContextManager[Database]: ...  # PgStore's: this thread's connection

    def record_command(self, user: str, now: datetime, limit: int) -> float:
        """Count a command by `user` unless they ran `limit` in the last minute (storage/contract.py).
        Any thread: the bot calls it from worker threads, each on its own connection (a
        connection may be shared between threads, a transaction may not)."""
        moment = now.timestamp()
        start = moment - WINDOW_SECONDS
        with self._reader() as db, db.transaction():
            db.lock(f"command_log {user}")  # two commands of one user decide in turn
            db.execute("DELETE FROM command_log WHERE at <= %s", [start])
            rows = db.all('SELECT at FROM command_log WHERE "user" = %s AND at > %s ORDER BY at LIMIT %s',
                          [user, start, limit])
            if len(rows) >= limit:
                return float(max(rows[0][0] + WINDOW_SECONDS - moment, 0.001))
            db.execute('INSERT INTO command_log ("user", at) VALUES (%s, %s)', [user, moment])
            return 0.0
