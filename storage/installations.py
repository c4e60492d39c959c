"""Slack distribution: the workspaces that installed the app (tokens sealed before they get
here), the OAuth states handed out by /slack/install, and which workspace a channel is in."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlite_utils import Database

from bot.models import SLACK_UNINSTALLED, ChannelRef, ChannelSettings, SlackInstallation

from .db import immediate, iso, parse_iso, write

_COLUMNS = ("team_id, sealed, installed_at, enterprise_id, team_name, app_id, bot_id, bot_user_id, bot_scopes, "
            "installer_user_id, is_enterprise_install")


class InstallationsMixin:
    db: Database

    if TYPE_CHECKING:  # from ChannelsMixin and Store, in the same Store
        def _thread_db(self) -> AbstractContextManager[Database]: ...

        def channel_settings(self, channel: ChannelRef) -> ChannelSettings: ...

        def save_channel_settings(self, settings: ChannelSettings, now: datetime) -> ChannelSettings: ...

    def save_slack_installation(self, installation: SlackInstallation, now: datetime) -> list[ChannelRef]:
        with immediate(self.db):
            self.db.execute(
                f"""INSERT INTO slack_installations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(team_id) DO UPDATE SET sealed = excluded.sealed,
                        installed_at = excluded.installed_at, enterprise_id = excluded.enterprise_id,
                        team_name = excluded.team_name, app_id = excluded.app_id, bot_id = excluded.bot_id,
                        bot_user_id = excluded.bot_user_id, bot_scopes = excluded.bot_scopes,
                        installer_user_id = excluded.installer_user_id,
                        is_enterprise_install = excluded.is_enterprise_install""",
                [installation.team_id, installation.sealed, iso(installation.installed_at),
                 installation.enterprise_id, installation.team_name, installation.app_id, installation.bot_id,
                 installation.bot_user_id, installation.bot_scopes, installation.installer_user_id,
                 int(installation.is_enterprise_install)])
            resumed = []
            for channel in self._team_channels(installation.team_id):
                settings = self.channel_settings(channel)
                if settings.paused and settings.paused_reason == SLACK_UNINSTALLED:
                    self.save_channel_settings(replace(settings, paused=False, paused_reason=None), now)
                    resumed.append(channel)
            return resumed

    def slack_installation(self, team_id: str) -> SlackInstallation | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM slack_installations WHERE team_id = ?", [team_id]).fetchone()
        return _installation(row) if row else None

    def slack_installations(self) -> list[SlackInstallation]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM slack_installations ORDER BY team_id").fetchall()
        return [_installation(row) for row in rows]

    def remove_slack_installation(self, team_id: str, now: datetime) -> list[ChannelRef]:
        with immediate(self.db):
            self.db.execute("DELETE FROM slack_installations WHERE team_id = ?", [team_id])
            paused = []
            for channel in self._team_channels(team_id):
                settings = self.channel_settings(channel)
                if not settings.paused:
                    self.save_channel_settings(replace(settings, paused=True, paused_reason=SLACK_UNINSTALLED), now)
                    paused.append(channel)
            return paused

    # The OAuth states and the channels' workspaces: any thread (the Slack front-end writes them
    # from worker threads, so that waiting for another process's write lock never holds the loop).

    def issue_slack_oauth_state(self, state: str, expires_at: datetime, now: datetime) -> None:
        with self._thread_db() as db, immediate(db):
            db.execute("DELETE FROM slack_oauth_states WHERE expires_at < ?", [iso(now)])
            db.execute("INSERT INTO slack_oauth_states (state, expires_at) VALUES (?, ?)", [state, iso(expires_at)])

    def consume_slack_oauth_state(self, state: str, now: datetime) -> bool:
        with self._thread_db() as db, immediate(db):
            row = db.execute("SELECT expires_at FROM slack_oauth_states WHERE state = ?", [state]).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM slack_oauth_states WHERE state = ?", [state])
            expires_at = parse_iso(row[0])
            return expires_at is not None and expires_at >= now

    def set_slack_channel_team(self, channel: ChannelRef, team_id: str) -> bool:
        if self.slack_channel_team(channel) == team_id:
            return False  # the usual case, without the write lock
        with self._thread_db() as db:
            write(db, """INSERT INTO slack_channel_teams (channel, team_id) VALUES (?, ?)
                         ON CONFLICT(channel) DO UPDATE SET team_id = excluded.team_id""", [channel.key, team_id])
        return True

    def slack_channel_team(self, channel: ChannelRef) -> str | None:
        with self._thread_db() as db:
            row = db.execute("SELECT team_id FROM slack_channel_teams WHERE channel = ?", [channel.key]).fetchone()
        return row[0] if row else None

    def _team_channels(self, team_id: str) -> list[ChannelRef]:
        rows = self.db.execute("SELECT channel FROM slack_channel_teams WHERE team_id = ? ORDER BY channel",
                               [team_id]).fetchall()
        return [ChannelRef.from_key(row[0]) for row in rows]


def _installation(row) -> SlackInstallation:
    installed_at = parse_iso(row[2])
    assert installed_at is not None  # NOT NULL
    return SlackInstallation(team_id=row[0], sealed=bytes(row[1]), installed_at=installed_at, enterprise_id=row[3],
                             team_name=row[4], app_id=row[5], bot_id=row[6], bot_user_id=row[7], bot_scopes=row[8],
                             installer_user_id=row[9], is_enterprise_install=bool(row[10]))
