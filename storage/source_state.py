"""Per-source health: last success, last error, consecutive failures."""

from __future__ import annotations

from datetime import datetime

from sqlite_utils import Database

from .db import immediate, iso, parse_iso


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

    def source_validators(self, source: str) -> dict[str, str]:
        """The ETag / Last-Modified of the source's last full response."""
        row = self.db.execute("SELECT etag, last_modified FROM source_state WHERE source = ?", [source]).fetchone()
        found = {"etag": row[0], "last-modified": row[1]} if row else {}
        return {k: v for k, v in found.items() if v}

    def save_source_validators(self, source: str, validators: dict[str, str]) -> None:
        self.db.execute(
            """INSERT INTO source_state (source, etag, last_modified) VALUES (?, ?, ?)
               ON CONFLICT(source) DO UPDATE SET etag = excluded.etag, last_modified = excluded.last_modified""",
            [source, validators.get("etag"), validators.get("last-modified")],
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
        self.db.execute(
            """INSERT INTO source_state (source, next_poll) VALUES (?, ?)
               ON CONFLICT(source) DO UPDATE SET next_poll = excluded.next_poll""",
            [source, iso(when)],
        )

    def source_state(self, source: str) -> dict | None:
        cursor = self.db.execute("SELECT * FROM source_state WHERE source = ?", [source])
        row = cursor.fetchone()
        if row is None:
            return None
        state = dict(zip([d[0] for d in cursor.description], row, strict=True))
        for key in ("last_attempt", "last_success", "last_error_at", "next_poll"):
            state[key] = parse_iso(state[key])
        return state
