"""Slack distribution: many workspaces install the app through OAuth, each posted to with its own token.

slack-bolt runs the install flow (`/slack/install`, `/slack/oauth_redirect`, oauth.v2.access);
this module gives it what it stores through: `SlackInstallationStore` and `SlackStateStore`,
over the bot's own database (the Store methods of `InstallationRecords`, reached without
importing storage). Tokens are sealed with Fernet (cryptography) under a key from the
environment before they reach the database, and opened only here, in memory.

A Slack channel belongs to the workspace its commands, events and buttons come from: bolt
names the team of every request, and `Workspaces.note_channel` records it with the channel
(`slack_channel_teams`). Posting to a channel uses that workspace's token; a channel nobody
has used a command in yet is posted to with the only installation when there is just one,
and otherwise waits in the outbox until someone does.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
import time
from collections import deque
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol, Sequence

from cryptography.fernet import Fernet, InvalidToken
from slack_bolt.oauth.async_callback_options import AsyncCallbackOptions, AsyncFailureArgs, AsyncSuccessArgs
from slack_bolt.response import BoltResponse
from slack_sdk.oauth.installation_store import Bot, Installation
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.web.async_client import AsyncWebClient

from ..clock import utcnow
from ..errors import ConfigError
from ..models import ChannelRef, SlackInstallation

log = logging.getLogger(__name__)

KEY_ENV = "PAPERS_BOT_TOKEN_KEY"  # the Fernet key that seals the workspaces' tokens at rest
CLIENT_SECRET_ENV = "SLACK_CLIENT_SECRET"  # the app's client secret (Basic Information -> App Credentials)
STATE_SECONDS = 600  # an install link (its OAuth state) is good for this long, once
# Install links one process hands out within STATE_SECONDS, at most: each is a row until it expires,
# and /slack/install is open to anyone, so a flood must not fill the database.
MAX_STATES = 2000
_SEALED_FIELDS = ("bot_token", "bot_refresh_token", "bot_token_expires_at", "user_token", "user_refresh_token",
                  "user_token_expires_at", "user_scopes", "incoming_webhook_url")
_KEY_HINT = ("make one with: python -c 'from cryptography.fernet import Fernet; "
             "print(Fernet.generate_key().decode())'")


class InstallationRecords(Protocol):
    """What this module uses of the Store (storage.StoreContract has each, documented there)."""

    def save_slack_installation(self, installation: SlackInstallation, now: datetime) -> list[ChannelRef]: ...

    def slack_installation(self, team_id: str) -> SlackInstallation | None: ...

    def slack_installations(self) -> list[SlackInstallation]: ...

    def remove_slack_installation(self, team_id: str, now: datetime) -> list[ChannelRef]: ...

    def issue_slack_oauth_state(self, state: str, expires_at: datetime, now: datetime) -> None: ...

    def consume_slack_oauth_state(self, state: str, now: datetime) -> bool: ...

    def set_slack_channel_team(self, channel: ChannelRef, team_id: str) -> bool: ...

    def slack_channel_team(self, channel: ChannelRef) -> str | None: ...


class Sealer:
    """Seals the tokens of an installation (Fernet: AES-128-CBC with an HMAC) and opens them."""

    def __init__(self, key: str | None):
        if not key:
            raise ConfigError(f"Slack distribution ([slack] client_id is set) needs {KEY_ENV} in the environment, "
                              f"the key that encrypts the workspaces' tokens at rest; {_KEY_HINT}")
        try:
            self._fernet = Fernet(key.strip().encode())
        except (ValueError, TypeError):
            raise ConfigError(f"{KEY_ENV} is not a Fernet key (32 bytes, url-safe base64); {_KEY_HINT}") from None

    def seal(self, values: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode())

    def open(self, sealed: bytes) -> dict[str, Any]:
        """The sealed values; ConfigError when this key did not seal them (never the token in a message)."""
        try:
            values = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise ConfigError(f"{KEY_ENV} does not open the Slack tokens stored in the database: it is not the key "
                              "they were sealed with. Set the key used when the workspaces installed the app "
                              "(or have them install it again)") from None
        return values if isinstance(values, dict) else {}


def _key(enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None) -> str:
    """The installation's key: the workspace, or the organization for an org-wide install."""
    if is_enterprise_install or not team_id:
        return enterprise_id or ""
    return team_id


class Workspaces:
    """The installed workspaces: each one's token (opened when needed), the team of each channel,
    and the stores bolt's install flow and authorization read and write."""

    def __init__(self, records: InstallationRecords, sealer: Sealer, api_url: str, *,
                 clock: Callable[[], datetime] = utcnow, state_seconds: int = STATE_SECONDS):
        self.records = records
        self.sealer = sealer
        self.api_url = api_url
        self.clock = clock
        self.state_seconds = state_seconds
        self._teams: dict[str, str] = {}  # channel id -> team, as recorded (saves a read per post)
        self._clients: dict[str, AsyncWebClient] = {}  # token -> its client
        self.installation_store = SlackInstallationStore(self)
        self.state_store = SlackStateStore(self)

    def check_key(self) -> int:
        """Open every stored installation: a wrong key, or tokens sealed with two keys (two
        processes started with different ones), stops the bot at start-up with one line
        (ConfigError), not at the first post. Returns how many workspaces are installed."""
        installations = self.records.slack_installations()
        for installation in installations:
            self.sealer.open(installation.sealed)
        return len(installations)

    # ---- which token posts to a channel --------------------------------------------------------

    def note_channel(self, channel_id: str, team_id: str) -> None:
        """A request from `channel_id` came from workspace `team_id`: posts there use its token."""
        if not (channel_id and team_id) or self._teams.get(channel_id) == team_id:
            return
        if self.records.set_slack_channel_team(ChannelRef("slack", channel_id), team_id):
            log.debug("Slack: channel %s is in workspace %s", channel_id, team_id)
        self._teams[channel_id] = team_id

    async def noted(self, channel_id: str, team_id: str) -> None:
        """`note_channel` from the event loop: a new channel's write waits its turn for the
        database (another process may hold its write lock) in a worker thread, not on the loop."""
        if not (channel_id and team_id) or self._teams.get(channel_id) == team_id:
            return
        # A channel keeps the workspace it was learnt from while that one has the app: a channel
        # shared between two workspaces (Slack Connect) sends requests from both, and one button
        # pressed by the other workspace's people made the channel theirs, so that their
        # uninstall paused a channel of the workspace that still had the app.
        known = self._teams.get(channel_id) or await self.off_loop(
            self.records.slack_channel_team, ChannelRef("slack", channel_id))
        if known not in (None, team_id) and self.records.slack_installation(known) is not None:
            self._teams[channel_id] = known
            return
        await self.off_loop(self.note_channel, channel_id, team_id)

    async def off_loop(self, func: Callable[..., Any], *args: Any) -> Any:
        """`func(*args)`, one of the store's "any thread" methods, in a worker thread when the
        store allows (a database file), else here."""
        reads_off_loop = getattr(self.records, "reads_off_loop", None)
        if reads_off_loop is not None and reads_off_loop():
            return await asyncio.to_thread(func, *args)
        return func(*args)

    def team_of(self, channel_id: str) -> str | None:
        team = self._teams.get(channel_id) or self.records.slack_channel_team(ChannelRef("slack", channel_id))
        if team is None:
            installations = self.records.slack_installations()
            if len(installations) == 1:  # one workspace: every channel is its
                return installations[0].team_id
            return None
        self._teams[channel_id] = team
        return team

    def token(self, team_id: str) -> str | None:
        installation = self.records.slack_installation(team_id)
        if installation is None:
            return None
        token = self.sealer.open(installation.sealed).get("bot_token")
        return token if isinstance(token, str) and token else None

    def client_for(self, channel_id: str) -> tuple[AsyncWebClient | None, str]:
        """The client posting to the channel with its workspace's token, and the team;
        (None, why) when there is none (the workspace unknown or not installed)."""
        team = self.team_of(channel_id)
        if team is None:
            return None, (f"no Slack workspace known for channel {channel_id}: run a /papers command in it "
                          "(the bot learns a channel's workspace from its commands)")
        try:
            token = self.token(team)
        except ConfigError as exc:  # sealed since start with another key: this workspace waits, the others go on
            return None, f"workspace {team}: {exc}"
        if token is None:
            return None, f"the Slack app is not installed in workspace {team}: install it there again"
        client = self._clients.get(token)
        if client is None:
            if len(self._clients) > 1000:
                self._clients.clear()
            client = self._clients[token] = AsyncWebClient(token=token, base_url=self.api_url, timeout=20)
        return client, team

    # ---- installs and uninstalls ---------------------------------------------------------------

    def installed(self, installation: Installation) -> None:
        team = _key(installation.enterprise_id, installation.team_id, installation.is_enterprise_install)
        sealed = self.sealer.seal({name: getattr(installation, name, None) for name in _SEALED_FIELDS})
        record = SlackInstallation(
            team_id=team, sealed=sealed, installed_at=self.clock(), enterprise_id=installation.enterprise_id or "",
            team_name=installation.team_name or installation.enterprise_name or "", app_id=installation.app_id or "",
            bot_id=installation.bot_id or "", bot_user_id=installation.bot_user_id or "",
            bot_scopes=",".join(installation.bot_scopes or []), installer_user_id=installation.user_id or "",
            is_enterprise_install=bool(installation.is_enterprise_install))
        resumed = self.records.save_slack_installation(record, self.clock())
        self._clients.clear()
        log.info("Slack: workspace %s installed the app%s", team,
                 f"; resumed {len(resumed)} channel(s) its uninstall had paused" if resumed else "")

    def removed(self, team_id: str, why: str) -> None:
        """The workspace uninstalled the app or revoked its token: forget the installation and
        pause its channels (their papers wait in the outbox until it installs the app again)."""
        if not team_id:
            return
        paused = self.records.remove_slack_installation(team_id, self.clock())
        self._clients.clear()
        log.info("Slack: workspace %s %s; paused %d channel(s) until it installs the app again", team_id, why,
                 len(paused))

    def _installation(self, enterprise_id: str | None, team_id: str | None,
                      is_enterprise_install: bool | None) -> tuple[SlackInstallation, dict[str, Any]] | None:
        record = self.records.slack_installation(_key(enterprise_id, team_id, is_enterprise_install))
        if record is None:
            return None
        return record, self.sealer.open(record.sealed)


class SlackInstallationStore(AsyncInstallationStore):
    """bolt's installation store over the bot's database (tokens sealed; see `Workspaces`)."""

    def __init__(self, workspaces: Workspaces):
        self.workspaces = workspaces

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_save(self, installation: Installation) -> None:
        self.workspaces.installed(installation)

    async def async_save_bot(self, bot: Bot) -> None:
        # Only bolt's token rotation saves a bot alone; keep it with what the installation had.
        found = self.workspaces._installation(bot.enterprise_id, bot.team_id, bot.is_enterprise_install)
        installation = Installation(
            app_id=bot.app_id, enterprise_id=bot.enterprise_id, team_id=bot.team_id, bot_token=bot.bot_token,
            bot_id=bot.bot_id, bot_user_id=bot.bot_user_id, bot_scopes=bot.bot_scopes,
            bot_refresh_token=bot.bot_refresh_token, bot_token_expires_at=bot.bot_token_expires_at,
            is_enterprise_install=bot.is_enterprise_install,
            user_id=found[0].installer_user_id if found else "", team_name=found[0].team_name if found else None)
        self.workspaces.installed(installation)

    async def async_find_bot(self, *, enterprise_id: str | None, team_id: str | None,
                             is_enterprise_install: bool | None = False) -> Bot | None:
        found = self.workspaces._installation(enterprise_id, team_id, is_enterprise_install)
        if found is None or not found[1].get("bot_token"):
            return None
        record, sealed = found
        return Bot(app_id=record.app_id or None, enterprise_id=record.enterprise_id or None,
                   team_id=None if record.is_enterprise_install else record.team_id, team_name=record.team_name,
                   bot_token=sealed["bot_token"], bot_id=record.bot_id, bot_user_id=record.bot_user_id,
                   bot_scopes=record.bot_scopes, bot_refresh_token=sealed.get("bot_refresh_token"),
                   bot_token_expires_at=sealed.get("bot_token_expires_at"),
                   is_enterprise_install=record.is_enterprise_install, installed_at=record.installed_at.timestamp())

    async def async_find_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                      user_id: str | None = None,
                                      is_enterprise_install: bool | None = False) -> Installation | None:
        found = self.workspaces._installation(enterprise_id, team_id, is_enterprise_install)
        if found is None:
            return None
        record, sealed = found
        if user_id is not None and user_id != record.installer_user_id:
            return None  # only the installer's (bot) installation is kept
        return Installation(
            app_id=record.app_id or None, enterprise_id=record.enterprise_id or None,
            team_id=None if record.is_enterprise_install else record.team_id, team_name=record.team_name,
            bot_token=sealed.get("bot_token"), bot_id=record.bot_id or None, bot_user_id=record.bot_user_id or None,
            bot_scopes=record.bot_scopes, bot_refresh_token=sealed.get("bot_refresh_token"),
            bot_token_expires_at=sealed.get("bot_token_expires_at"), user_id=record.installer_user_id,
            user_token=sealed.get("user_token"), user_scopes=sealed.get("user_scopes") or "",
            user_refresh_token=sealed.get("user_refresh_token"),
            user_token_expires_at=sealed.get("user_token_expires_at"),
            incoming_webhook_url=sealed.get("incoming_webhook_url"),
            is_enterprise_install=record.is_enterprise_install, installed_at=record.installed_at.timestamp())

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        self.workspaces.removed(_key(enterprise_id, team_id, None), "revoked the bot's token")

    async def async_delete_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                        user_id: str | None = None) -> None:
        if user_id is None:
            self.workspaces.removed(_key(enterprise_id, team_id, None), "uninstalled the app")

    async def async_delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        self.workspaces.removed(_key(enterprise_id, team_id, None), "uninstalled the app")


class TooManyInstalls(Exception):
    """More install links asked for than MAX_STATES within their lifetime: try again later."""


class SlackStateStore(AsyncOAuthStateStore):
    """The OAuth `state` of each install link, in the bot's database: good once, for a while."""

    def __init__(self, workspaces: Workspaces, max_states: int = MAX_STATES):
        self.workspaces = workspaces
        self.max_states = max_states
        self._issued: deque[float] = deque()  # monotonic times of the links handed out, within their lifetime

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_issue(self, *args, **kwargs) -> str:
        now_mono = time.monotonic()
        while self._issued and self._issued[0] < now_mono - self.workspaces.state_seconds:
            self._issued.popleft()
        if len(self._issued) >= self.max_states:
            raise TooManyInstalls()
        self._issued.append(now_mono)
        state = secrets.token_urlsafe(24)
        now = self.workspaces.clock()
        await self.workspaces.off_loop(self.workspaces.records.issue_slack_oauth_state, state,
                                       now + timedelta(seconds=self.workspaces.state_seconds), now)
        return state

    async def async_consume(self, state: str) -> bool:
        if not (isinstance(state, str) and 0 < len(state) <= 200):
            return False
        return bool(await self.workspaces.off_loop(self.workspaces.records.consume_slack_oauth_state, state,
                                                   self.workspaces.clock()))


# ---- the pages the installer's browser sees -----------------------------------------------------

_FAILURES = {
    "access_denied": "The installation was cancelled in Slack.",
    "invalid_browser": "This install link was opened in another browser, or its cookie is gone.",
    "invalid_state": "This install link has expired or was already used.",
    "missing_code": "Slack sent no authorization code.",
    "invalid_code": "Slack did not accept the authorization code (it may have been used already).",
    "storage_error": "The installation could not be saved.",
}


def busy_page(install_path: str) -> BoltResponse:
    """What the browser sees when the install pages cannot be served now (a flood, the database busy)."""
    return _page(503, "Try again in a minute",
                 f"The installation cannot start right now. <a href=\"{html.escape(install_path)}\">Try again</a>.")


def _page(status: int, title: str, text: str) -> BoltResponse:
    body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{text}</p></body></html>")
    return BoltResponse(status=status, body=body, headers={"Content-Type": "text/html; charset=utf-8",
                                                           "Cache-Control": "no-store"})


def callback_pages(install_path: str, command: str) -> AsyncCallbackOptions:
    """The success and failure pages of /slack/oauth_redirect: plain, escaped, no outside address."""

    async def success(args: AsyncSuccessArgs) -> BoltResponse:
        name = args.installation.team_name or args.installation.enterprise_name or "your workspace"
        text = (f"papers-bot is installed in {html.escape(name)}. Invite it to a channel "
                f"(<code>/invite @papers</code>) and type <code>{html.escape(command)} help</code> there.")
        return _page(200, "Installed", text)

    async def failure(args: AsyncFailureArgs) -> BoltResponse:
        reason = _FAILURES.get(args.reason, "Slack answered with an error.")
        log.info("Slack: an installation failed (%s)", args.reason if args.reason in _FAILURES else "other error")
        text = (f"{html.escape(reason)} Nothing was installed. "
                f"<a href=\"{html.escape(install_path)}\">Start the installation again</a>.")
        status = args.suggested_status_code if args.suggested_status_code >= 400 else 400
        return _page(status, "Not installed", text)

    return AsyncCallbackOptions(success=success, failure=failure)


def uninstalled_team(body: dict, context: Any) -> str:
    """The installation an app_uninstalled / tokens_revoked event is about."""
    enterprise = getattr(context, "enterprise_id", None) or body.get("enterprise_id")
    team = getattr(context, "team_id", None) or body.get("team_id")
    org_wide = bool(getattr(context, "is_enterprise_install", None) or body.get("is_enterprise_install"))
    return _key(enterprise, team, org_wide)


def bot_tokens_revoked(event: dict) -> bool:
    tokens = event.get("tokens") if isinstance(event, dict) else None
    bots = tokens.get("bot") if isinstance(tokens, dict) else None
    return isinstance(bots, list) and bool(bots)


__all__: Sequence[str] = ["CLIENT_SECRET_ENV", "KEY_ENV", "Sealer", "SlackInstallationStore", "SlackStateStore",
                          "Workspaces", "callback_pages"]
