"""Per-source health: last success, last error, consecutive failures."""

from __future__ import annotations

from datetime import datetime

from sqlite_utils import Database

from bot.models import SourceStatus, Validators

from .db import immediate, iso, parse_iso, write


class SourceStateMixin:
    db: Database

    def record_source_success(self, source: str, now: datetime, count: int) -> int:
        """Record a success; returns how many failures in a row it ends (0 if none)."""
        with immediate(self.db):
            return self._record_source_success(source, now, count)

    def _record_source_success(self, source: str, now: datetime, count: int) -> int:
        row = self.db.execute("SELECT consecutive_failures FROM source_state WHERE source = ?", [source]).fetchone()
        self.db.execute(
            """INSERT INTO source_state (source, last_attempt, last_success, consecutive_failures, last_count)
               VALUES (?, ?, ?, 0, ?)
               ON CONFLICT(source) DO UPDATE SET last_attempt = excluded.last_attempt,
                   last_success = excluded.last_success, consecutive_failures = 0,
                   last_count = excluded.last_count, next_poll = NULL""",
            [source, iso(now), iso(now), count],
        )
        return row[0] if row else 0

    def source_validators(self, source: str) -> Validators:
        """The ETag / Last-Modified of the source's last stored full response."""
        row = self.db.execute("SELECT etag, last_modified FROM source_state WHERE source = ?", [source]).fetchone()
        return Validators(row[0] or None, row[1] or None) if row else Validators()

    def save_source_validators(self, source: str, validators: Validators) -> None:
        write(
            self.db,
            """INSERT INTO source_state (source, etag, last_modified) VALUES (?, ?, ?)
               ON CONFLICT(source) DO UPDATE SET etag = excluded.etag, last_modified = excluded.last_modified""",
            [source, validators.etag or None, validators.last_modified or None],
        )

    def record_source_failure(self, source: str, now: datetime, error: str) -> int:
        """Record a failure; returns the number of consecutive failures so far."""
        with immediate(self.db):
            return self._record_source_failure(source, now, error)

    def _record_source_failure(self, source: str, now: datetime, error: str) -> int:
        self.db.execute(
            """INSERT INTO source_state (source, last_attempt, last_error, last_error_at, consecutive_failures)
               VALUES (?, ?, ?, ?, 1)
               ON CONFLICT(source) DO UPDATE SET last_attempt = excluded.last_attempt,
                   last_error = excluded.last_error, last_error_at = excluded.last_error_at,
                   consecutive_failures = consecutive_failures + 1, next_poll = NULL""",
            [source, iso(now), error[:500], iso(now)],
        )
        return self.db.execute(
            "SELECT consecutive_failures FROM source_state WHERE source = ?", [source]
        ).fetchone()[0]

    def set_source_next_poll(self, source: str, when: datetime) -> None:
        """When `run` will next poll the source (after a failure: the backoff retry).

        Every recorded poll clears it (a `papers-bot poll` from cron plans nothing); `run`
        sets it right after, so status never shows a plan nobody is following."""
        write(
            self.db,
            """INSERT INTO source_state (source, next_poll) VALUES (?, ?)
               ON CONFLICT(source) DO UPDATE SET next_poll = excluded.next_poll""",
            [source, iso(when)],
        )

    def source_state(self, source: str) -> SourceStatus | None:
        """The source's recorded health; None when nothing was ever recorded for it."""
        row = self.db.execute(
            """SELECT last_attempt, last_success, last_error, last_error_at, consecutive_failures, last_count,
                      next_poll, etag, last_modified FROM source_state WHERE source = ?""", [source]).fetchone()
        if row is None:
            return None
        attempt, success, error, error_at, failures, count, next_poll, etag, modified = row
        return SourceStatus(source, last_attempt=parse_iso(attempt), last_success=parse_iso(success),
                            last_error=error, last_error_at=parse_iso(error_at),
                            consecutive_failures=failures or 0, last_count=count, next_poll=parse_iso(next_poll),
                            validators=Validators(etag or None, modified or None))
