"""Slack distribution on PostgreSQL: the installations (tokens sealed before they get here), the
OAuth states of /slack/install, and which workspace each Slack channel is in (storage/contract.py)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from bot.models import SLACK_UNINSTALLED, ChannelRef, SlackInstallation

from .db import Database, from_db, utc

_COLUMNS = ("team_id, sealed, installed_at, enterprise_id, team_name, app_id, bot_id, bot_user_id, bot_scopes, "
            "installer_user_id, is_enterprise_install")


class InstallationsMixin:
    db: Database

    if TYPE_CHECKING:  # from PgStore
        def _reader(self) -> AbstractContextManager[Database]: ...

    def save_slack_installation(self, installation: SlackInstallation, now: datetime) -> list[ChannelRef]:
        with self.db.transaction():
            self.db.execute(
                f"""INSERT INTO slack_installations ({_COLUMNS})
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (team_id) DO UPDATE SET sealed = excluded.sealed,
                        installed_at = excluded.installed_at, enterprise_id = excluded.enterprise_id,
                        team_name = excluded.team_name, app_id = excluded.app_id, bot_id = excluded.bot_id,
                        bot_user_id = excluded.bot_user_id, bot_scopes = excluded.bot_scopes,
                        installer_user_id = excluded.installer_user_id,
                        is_enterprise_install = excluded.is_enterprise_install""",
                [installation.team_id, installation.sealed, utc(installation.installed_at),
                 installation.enterprise_id, installation.team_name, installation.app_id, installation.bot_id,
                 installation.bot_user_id, installation.bot_scopes, installation.installer_user_id,
                 installation.is_enterprise_install])
            rows = self.db.all(
                """UPDATE channels SET paused = false, paused_reason = NULL, updated_at = %s
                    WHERE paused AND paused_reason = %s
                      AND channel IN (SELECT channel FROM slack_channel_teams WHERE team_id = %s)
                   RETURNING channel""",
                [utc(now), SLACK_UNINSTALLED, installation.team_id])
            return sorted((ChannelRef.from_key(row[0]) for row in rows), key=lambda c: c.key)

    def slack_installation(self, team_id: str) -> SlackInstallation | None:
        row = self.db.one(f"SELECT {_COLUMNS} FROM slack_installations WHERE team_id = %s", [team_id])
        return _installation(row) if row else None

    def slack_installations(self) -> list[SlackInstallation]:
        rows = self.db.all(f"SELECT {_COLUMNS} FROM slack_installations ORDER BY team_id")
        return [_installation(row) for row in rows]

    def remove_slack_installation(self, team_id: str, now: datetime) -> list[ChannelRef]:
        with self.db.transaction():
            self.db.execute("DELETE FROM slack_installations WHERE team_id = %s", [team_id])
            # A channel without a settings row gets one, paused; one paused already (by hand, or
            # by the platform) keeps its reason, so a reinstall leaves it paused.
            rows = self.db.all(
                """INSERT INTO channels (channel, paused, paused_reason, updated_at)
                   SELECT channel, true, %s, %s FROM slack_channel_teams WHERE team_id = %s
                   ON CONFLICT (channel) DO UPDATE SET paused = true, paused_reason = excluded.paused_reason,
                       updated_at = excluded.updated_at
                    WHERE NOT channels.paused
                   RETURNING channel""",
                [SLACK_UNINSTALLED, utc(now), team_id])
            return sorted((ChannelRef.from_key(row[0]) for row in rows), key=lambda c: c.key)

    # The OAuth states and the channels' workspaces: any thread (the Slack front-end calls them
    # from worker threads, each on its own connection).

    def issue_slack_oauth_state(self, state: str, expires_at: datetime, now: datetime) -> None:
        with self._reader() as db, db.transaction():
            db.execute("DELETE FROM slack_oauth_states WHERE expires_at < %s", [utc(now)])
            db.execute("INSERT INTO slack_oauth_states (state, expires_at) VALUES (%s, %s)",
                       [state, utc(expires_at)])

    def consume_slack_oauth_state(self, state: str, now: datetime) -> bool:
        # One statement: of two processes consuming the same state, only one deletes the row.
        with self._reader() as db:
            row = db.one("DELETE FROM slack_oauth_states WHERE state = %s RETURNING expires_at", [state])
        return row is not None and row[0] >= utc(now)

    def set_slack_channel_team(self, channel: ChannelRef, team_id: str) -> bool:
        if self.slack_channel_team(channel) == team_id:
            return False  # the usual case, without a write
        with self._reader() as db:
            row = db.one(
            """INSERT INTO slack_channel_teams (channel, team_id) VALUES (%s, %s)
               ON CONFLICT (channel) DO UPDATE SET team_id = excluded.team_id
                WHERE slack_channel_teams.team_id <> excluded.team_id
               RETURNING channel""", [channel.key, team_id])
        return row is not None

    def slack_channel_team(self, channel: ChannelRef) -> str | None:
        with self._reader() as db:
            row = db.one("SELECT team_id FROM slack_channel_teams WHERE channel = %s", [channel.key])
        return row[0] if row else None


def _installation(row: tuple) -> SlackInstallation:
    installed_at = from_db(row[2])
    assert installed_at is not None  # NOT NULL
    return SlackInstallation(team_id=row[0], sealed=bytes(row[1]), installed_at=installed_at, enterprise_id=row[3],
                             team_name=row[4], app_id=row[5], bot_id=row[6], bot_user_id=row[7], bot_scopes=row[8],
                             installer_user_id=row[9], is_enterprise_install=bool(row[10]))
