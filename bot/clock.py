"""The one place the bot asks for the time; everything else takes a `clock` argument."""

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
