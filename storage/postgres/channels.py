"""Per-channel settings: delivery mode, digest time, time zone, paused; on PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from bot.models import ChannelRef, ChannelSettings, SettingsChange

from .db import Database, from_db, utc

_COLUMNS = "channel, mode, digest_time, digest_day, timezone, paused, last_digest_at, updated_at, paused_reason"


class ChannelsMixin:
    db: Database

    def channel_settings(self, channel: ChannelRef) -> ChannelSettings:
        row = self.db.one(f"SELECT {_COLUMNS} FROM channels WHERE channel = %s", [channel.key])
        return _settings(row) if row else ChannelSettings(channel)

    def save_channel_settings(self, settings: ChannelSettings, now: datetime) -> ChannelSettings:
        saved = replace(settings, updated_at=now)
        with self.db.transaction():
            self.db.execute(
                f"""INSERT INTO channels ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (channel) DO UPDATE SET mode = excluded.mode, digest_time = excluded.digest_time,
                        digest_day = excluded.digest_day, timezone = excluded.timezone, paused = excluded.paused,
                        last_digest_at = excluded.last_digest_at, updated_at = excluded.updated_at,
                        paused_reason = excluded.paused_reason""",
                [saved.channel.key, saved.mode, saved.digest_time, saved.digest_day, saved.timezone,
                 bool(saved.paused), utc(saved.last_digest_at) if saved.last_digest_at else None, utc(now),
                 saved.paused_reason if saved.paused else None])
        return saved

    def update_channel_settings(self, channel: ChannelRef, now: datetime, **changes: Any) -> SettingsChange:
        """Change some settings of a channel, keeping the others as they are in the database
        (not as a caller read them earlier): returns the settings before and after."""
        with self.db.transaction():
            # Decides from what it read, and the row may not exist yet (nothing to lock FOR
            # UPDATE): two changes of one channel take turns on an advisory lock of it.
            self.db.lock(f"channels {channel.key}")
            before = self.channel_settings(channel)
            return SettingsChange(before, self.save_channel_settings(replace(before, **changes), now))

    def digest_channels(self) -> list[ChannelSettings]:
        rows = self.db.all(f"""SELECT {_COLUMNS} FROM channels WHERE mode <> 'instant' AND NOT paused
                               ORDER BY channel COLLATE "C" """)
        return [_settings(row) for row in rows]

    def all_channel_settings(self) -> list[ChannelSettings]:
        return [_settings(row) for row in self.db.all(f'SELECT {_COLUMNS} FROM channels ORDER BY channel COLLATE "C"')]


def _settings(row: tuple) -> ChannelSettings:
    return ChannelSettings(
        channel=ChannelRef.from_key(row[0]),
        mode=row[1],
        digest_time=row[2],
        digest_day=row[3],
        timezone=row[4],
        paused=bool(row[5]),
        last_digest_at=from_db(row[6]),
        updated_at=from_db(row[7]),
        paused_reason=row[8],
    )
