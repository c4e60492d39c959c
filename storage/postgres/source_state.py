"""Per-source health and validators, on PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from bot.models import SourceStatus, Validators

from .db import Database, from_db, utc


class SourceStateMixin:
    db: Database

    def record_source_success(self, source: str, now: datetime, count: int) -> int:
        with self.db.transaction():
            row = self.db.one("SELECT consecutive_failures FROM source_state WHERE source = %s FOR UPDATE", [source])
            self.db.execute(
                """INSERT INTO source_state (source, last_attempt, last_success, consecutive_failures, last_count)
                   VALUES (%s, %s, %s, 0, %s)
                   ON CONFLICT (source) DO UPDATE SET last_attempt = excluded.last_attempt,
                       last_success = excluded.last_success, consecutive_failures = 0,
                       last_count = excluded.last_count, next_poll = NULL""",
                [source, utc(now), utc(now), count])
            return int(row[0]) if row else 0

    def source_validators(self, source: str) -> Validators:
        row = self.db.one("SELECT etag, last_modified FROM source_state WHERE source = %s", [source])
        return Validators(row[0] or None, row[1] or None) if row else Validators()

    def save_source_validators(self, source: str, validators: Validators) -> None:
        self.db.execute(
            """INSERT INTO source_state (source, etag, last_modified) VALUES (%s, %s, %s)
               ON CONFLICT (source) DO UPDATE SET etag = excluded.etag, last_modified = excluded.last_modified""",
            [source, validators.etag or None, validators.last_modified or None])

    def record_source_failure(self, source: str, now: datetime, error: str) -> int:
        row = self.db.one(
            """INSERT INTO source_state (source, last_attempt, last_error, last_error_at, consecutive_failures)
               VALUES (%s, %s, %s, %s, 1)
               ON CONFLICT (source) DO UPDATE SET last_attempt = excluded.last_attempt,
                   last_error = excluded.last_error, last_error_at = excluded.last_error_at,
                   consecutive_failures = source_state.consecutive_failures + 1, next_poll = NULL
               RETURNING consecutive_failures""",
            [source, utc(now), error[:500], utc(now)])
        assert row is not None
        return int(row[0])

    def set_source_next_poll(self, source: str, when: datetime) -> None:
        self.db.execute(
            """INSERT INTO source_state (source, next_poll) VALUES (%s, %s)
               ON CONFLICT (source) DO UPDATE SET next_poll = excluded.next_poll""",
            [source, utc(when)])

    def source_state(self, source: str) -> SourceStatus | None:
        row = self.db.one(
            """SELECT last_attempt, last_success, last_error, last_error_at, consecutive_failures, last_count,
                      next_poll, etag, last_modified FROM source_state WHERE source = %s""", [source])
        if row is None:
            return None
        attempt, success, error, error_at, failures, count, next_poll, etag, modified = row
        return SourceStatus(source, last_attempt=from_db(attempt), last_success=from_db(success),
                            last_error=error, last_error_at=from_db(error_at),
                            consecutive_failures=failures or 0, last_count=count, next_poll=from_db(next_poll),
                            validators=Validators(etag or None, modified or None))
