"""Opening the database: WAL, foreign keys, a busy timeout, migrations applied."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from .migrations import migrations


def open_database(path: str | Path) -> Database:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # timeout: a second process (say `papers-bot command` while `run` polls) waits its turn.
    conn = sqlite3.connect(str(path), timeout=10.0)
    db = Database(conn)
    if str(path) != ":memory:":
        db.enable_wal()
    db.execute("PRAGMA foreign_keys = ON")
    migrations.apply(db)
    return db


def iso(moment: datetime) -> str:
    """UTC ISO-8601, sortable as text."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def parse_day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None
