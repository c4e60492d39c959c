"""Configuration: one TOML file, validated at start-up; secrets only from the environment.

Where the file comes from: `--config PATH`, else `$PAPERS_BOT_CONFIG`, else `./config.toml`
if present, else the built-in defaults. Unknown keys and wrong types fail with a message
that names the key. Tokens are never read from the file and never printed: `Secrets`
hides its values in repr().
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from . import sources
from .errors import ConfigError
from .sources import SourceConfig
from .sources.base import url_problem

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# What the app asks a workspace for when it installs (slack-manifest.yml lists the same, with why).
_BOT_SCOPES = ("commands", "chat:write", "links:read", "links:write", "app_mentions:read", "channels:history",
               "groups:history", "im:history")


_url = url_problem


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _channel_ok(value: str) -> bool:
    from .models import ChannelRef

    try:
        ChannelRef.parse(value)
    except ValueError:
        return False
    return True


def _host(value: str) -> str | None:
    """A bind address: an IPv4 or IPv6 address, or a host name such as localhost."""
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", value):
        return None
    return 'must be an address to listen on, such as "127.0.0.1", "0.0.0.0" or "::"'


def _shard_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000


def _level(value: str) -> str | None:
    return None if value.upper() in _LOG_LEVELS else f"must be one of {', '.join(_LOG_LEVELS)}"


Schema = dict[str, dict[str, tuple[type, Any, Callable[[Any], str | None] | None]]]

# section -> key -> (type, default, extra check). The single source of truth for keys;
# config.example.toml documents every one of them (a test keeps that true). The
# [sources.NAME] sections come from the source registry (bot/sources): see schema().
_SCHEMA: Schema = {
    "storage": {
        "path": (str, "papers-bot.db", None),
        "url": (str, "", lambda v: None if not v or re.match(r"^postgres(ql)?://", v)
                else "must be a postgresql:// URL, or empty for the SQLite file of path"),
        "busy_timeout_seconds": (float, 10.0, _positive),
    },
    "http": {
        "timeout_seconds": (float, 20.0, _positive),
        "max_response_mb": (float, 20.0, _positive),
    },
    "delivery": {
        "cards_per_cycle": (int, 10, _positive),
        "max_age_days": (int, 7, _positive),
        "admin_channel": (str, "", lambda v: None if not v or _channel_ok(v)
                          else "must be like slack:C123, discord:123 or console:ops"),
        "source_failure_notice_after": (int, 3, _positive),
        "sweep_seconds": (float, 30.0, _positive),
        "max_concurrent_channels": (int, 50, _positive),
    },
    "recommend": {
        "per_day": (int, 3, _positive),
        "refit_hours": (float, 24.0, _positive),
        "fit_papers": (int, 20_000, lambda v: None if v >= 100 else "must be at least 100"),
    },
    "limits": {
        "max_subscriptions_per_channel": (int, 50, _positive),
        "commands_per_minute": (int, 20, _positive),
    },
    "feedback": {
        "saved_shown": (int, 10, lambda v: None if 1 <= v <= 50 else "must be from 1 to 50"),
        "most_saved_papers": (int, 10, lambda v: None if 1 <= v <= 20 else "must be from 1 to 20"),
    },
    "slack": {
        "mode": (str, "socket", lambda v: None if v in ("socket", "http") else 'must be "socket" or "http"'),
        "port": (int, 3000, lambda v: None if 1 <= v <= 65535 else "must be a port number"),
        "api_url": (str, "https://slack.com/api/", _url),
        "command": (str, "/papers",
                    lambda v: None if re.match(r"^/[a-z0-9_-]{1,31}$", v) else "must look like /papers"),
        "admins": (list, [],
                   lambda v: None if all(isinstance(u, str) and u for u in v) else "must list Slack user ids"),
        "host": (str, "0.0.0.0", _host),
        # Slack distribution (the OAuth install flow, many workspaces): on when client_id is set.
        "client_id": (str, "", lambda v: None if not v or re.fullmatch(r"[0-9]+\.[0-9]+", v)
                      else "must be the app's Client ID (digits.digits), or empty for one workspace"),
        "scopes": (list, list(_BOT_SCOPES),
                   lambda v: None if v and all(isinstance(s, str) and re.fullmatch(r"[a-z.:_-]+", s) for s in v)
                   else "must list bot scopes such as \"chat:write\""),
        "redirect_uri": (str, "", lambda v: None if not v or not _url(v) else _url(v)),
        "authorize_url": (str, "https://slack.com/oauth/v2/authorize", _url),
    },
    "discord": {
        "api_base": (str, "https://discord.com/api/v10", _url),
        "dev_guild_id": (int, 0, lambda v: None if v >= 0 else "must be a guild id, or 0 for global commands"),
        "message_content": (bool, False, None),
        "gateway_url": (str, "", lambda v: None if not v or re.match(r"^wss?://[^\s/]+", v)
                        else "must be a ws:// or wss:// URL, or empty"),
        # "auto" or a number: `object`, the check below says which values pass.
        "shards": (object, "auto", lambda v: None if v == "auto" or _shard_count(v) else
                   'must be "auto" or a number of shards from 1 to 10000'),
        "shard_ids": (list, [], lambda v: None if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                      for i in v) and len(set(v)) == len(v)
                      else "must list different shard ids (0, 1, ...)"),
        "requests_per_second": (int, 50, lambda v: None if 1 <= v <= 50 else "must be from 1 to 50"),
    },
    "metrics": {
        "port": (int, 0, lambda v: None if 0 <= v <= 65535 else "must be a port number, or 0 for off"),
        "host": (str, "127.0.0.1", _host),
    },
    "logging": {
        "level": (str, "INFO", _level),
    },
    "matching": {
        "processes": (int, 1, lambda v: None if 1 <= v <= 64 else "must be from 1 to 64"),
        # true, false or "auto": `object`, the check below says which values pass.
        "worker_process": (object, "auto", lambda v: None if v == "auto" or isinstance(v, bool) else
                           'must be true, false or "auto"'),
    },
    "debug": {
        "loop_watchdog_ms": (int, 0, lambda v: None if v >= 0 else "must be 0 (off) or a number of milliseconds"),
    },
}



def schema() -> Schema:
    """Every section: the fixed ones, and one [sources.NAME] per registered source."""
    source_sections: Schema = {
        f"sources.{spec.name}": {
            "enabled": (bool, True, None),
            "interval_minutes": (float, spec.interval_minutes, _positive),
            **spec.settings,
        }
        for spec in sources.SOURCES
    }
    first, rest = dict(list(_SCHEMA.items())[:1]), dict(list(_SCHEMA.items())[1:])
    return {**first, **source_sections, **rest}


SCHEMA = schema()

SECRET_NAMES = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_TOKEN",
                # Slack distribution: the app's client secret, and the Fernet key sealing the tokens at rest
                "SLACK_CLIENT_SECRET", "PAPERS_BOT_TOKEN_KEY")


@dataclass(frozen=True)
class Secrets:
    """Platform tokens from the environment. repr() never shows a value."""

    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Secrets:
        source: Mapping[str, str] = os.environ if env is None else env
        return cls({k: source[k] for k in SECRET_NAMES if source.get(k)})

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def __repr__(self) -> str:
        return f"Secrets(set={sorted(self.values)})"


@dataclass(frozen=True)
class DeliveryConfig:
    cards_per_cycle: int = 10  # per channel and burst; then one digest, which counts the rest
    max_age_days: int = 7  # papers listed longer ago are stored, not posted
    admin_channel: str = ""  # where source failure and recovery notices go ("" for none)
    source_failure_notice_after: int = 3  # consecutive failures before a notice
    sweep_seconds: float = 30.0  # how often `run` retries the outbox between polls
    max_concurrent_channels: int = 50  # channels served side by side in a sweep


@dataclass(frozen=True)
class FeedbackConfig:
    saved_shown: int = 10  # papers `/papers saved` lists
    most_saved_papers: int = 10  # papers in a weekly "most saved" digest


@dataclass(frozen=True)
class RecommendConfig:
    per_day: int = 3  # a like: subscription without score>= gets about this many papers a day
    refit_hours: float = 24.0  # how often the tf-idf vocabulary and idf are fitted again
    fit_papers: int = 20_000  # on this many of the most recent stored papers


@dataclass(frozen=True)
class SlackConfig:
    mode: str = "socket"
    port: int = 3000
    api_url: str = "https://slack.com/api/"
    command: str = "/papers"
    admins: tuple[str, ...] = ()  # who may change channels; empty: everyone
    host: str = "0.0.0.0"  # where HTTP mode listens; Slack (or your reverse proxy) must reach it
    client_id: str = ""  # set: Slack distribution (OAuth installs, a token per workspace); HTTP mode only
    scopes: tuple[str, ...] = _BOT_SCOPES  # the bot scopes an install asks for
    redirect_uri: str = ""  # https://YOUR-HOST/slack/oauth_redirect; empty: the one set in the app
    authorize_url: str = "https://slack.com/oauth/v2/authorize"  # where /slack/install sends the browser

    @property
    def distribution(self) -> bool:
        """Many workspaces, each installing the app through OAuth (not one SLACK_BOT_TOKEN)."""
        return bool(self.client_id)


@dataclass(frozen=True)
class DiscordConfig:
    api_base: str = "https://discord.com/api/v10"
    dev_guild_id: int = 0  # sync commands to this guild only (instant), 0: globally
    message_content: bool = False  # privileged intent: card replies to pasted paper links
    gateway_url: str = ""  # the gateway WebSocket; empty: the one GET /gateway/bot on api_base names
    shards: int | None = None  # the bot's number of gateway shards; None ("auto"): what GET /gateway/bot says
    shard_ids: tuple[int, ...] = ()  # the shards this process connects; empty: all of them
    requests_per_second: int = 50  # this process's share of Discord's global limit (50/s a bot token)


@dataclass(frozen=True)
class Config:
    storage_path: str
    sources: Mapping[str, SourceConfig]  # [sources.NAME] of every registered source, in registry order
    http_timeout: float
    max_response_bytes: int
    max_subscriptions_per_channel: int
    commands_per_minute: int
    log_level: str
    secrets: Secrets = field(default_factory=Secrets)
    source_file: str | None = None
    slack: SlackConfig = field(default_factory=SlackConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    metrics_port: int = 0  # 0: no /healthz and /metrics server
    metrics_host: str = "127.0.0.1"  # unauthenticated: loopback unless you choose otherwise
    storage_busy_timeout: float = 10.0  # seconds to wait for another process's write lock
    match_processes: int = 1  # >1: the matching index is split over this many worker processes
    # True: the index is held by a worker process even when match_processes is 1; "auto": when
    # the first load finds AUTO_WORKER_FROM subscriptions or more (bot/poller.py) and a second core
    match_worker: bool | Literal["auto"] = "auto"
    storage_url: str = ""  # postgresql://...: PostgreSQL instead of the SQLite file storage_path
    loop_watchdog_ms: int = 0  # `run` logs event-loop stalls longer than this, with their stack; 0: off (250 with -v)

    @property
    def storage_target(self) -> str:
        """What storage.open_store opens: the PostgreSQL URL when set, else the SQLite file."""
        return self.storage_url or self.storage_path


def _flatten(data: dict, known: Schema, prefix: str = "") -> dict[str, dict]:
    """Split the TOML tree into {"section.sub": {key: value}} for the known sections."""
    sections: dict[str, dict] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigError(f"unknown key {name!r}")
        leaves = {k: v for k, v in value.items() if not isinstance(v, dict)}
        children = {k: v for k, v in value.items() if isinstance(v, dict)}
        if leaves or name in known or not children:  # an empty table too: `[sources.huggingfac]` is a typo
            sections[name] = leaves
        if children:
            sections.update(_flatten(children, known, f"{name}."))
    return sections


def _check(known: Schema, section: str, key: str, value: Any) -> Any:
    expected, _default, extra = known[section][key]
    where = f"[{section}] {key}"
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        article = "an" if expected.__name__[0] in "aeiou" else "a"
        raise ConfigError(f"{where} must be {article} {expected.__name__}, got {type(value).__name__}")
    if extra is not None and (problem := extra(value)):
        raise ConfigError(f"{where} {problem}")
    return value


def parse_config(data: dict, secrets: Secrets | None = None, source_file: str | None = None) -> Config:
    known = schema()
    values = {s: {k: spec[1] for k, spec in keys.items()} for s, keys in known.items()}
    for section, items in _flatten(data, known).items():
        for key in items:
            if any(word in key.lower() for word in ("token", "secret", "password")):
                raise ConfigError(
                    f"[{section}] {key}: secrets are never read from the config file; "
                    f"set them in the environment ({', '.join(SECRET_NAMES)})"
                )
        if section not in known:
            names = ", ".join(f"[{s}]" for s in known)
            raise ConfigError(f"unknown section [{section}] (known: {names})")
        for key, value in items.items():
            if key not in known[section]:
                names = ", ".join(known[section])
                raise ConfigError(f"unknown key {key!r} in [{section}] (known: {names})")
            values[section][key] = _check(known, section, key, value)
    if values["slack"]["client_id"] and values["slack"]["mode"] != "http":
        raise ConfigError('[slack] client_id (installing to many workspaces) needs [slack] mode = "http": '
                          "the install pages are served by the Slack HTTP endpoint")
    return Config(
        storage_path=values["storage"]["path"],
        storage_url=values["storage"]["url"],
        sources={spec.name: _source_config(values[f"sources.{spec.name}"]) for spec in sources.SOURCES},
        http_timeout=values["http"]["timeout_seconds"],
        max_response_bytes=int(values["http"]["max_response_mb"] * 1024 * 1024),
        max_subscriptions_per_channel=values["limits"]["max_subscriptions_per_channel"],
        commands_per_minute=values["limits"]["commands_per_minute"],
        log_level=values["logging"]["level"].upper(),
        secrets=secrets if secrets is not None else Secrets.from_env(),
        source_file=source_file,
        slack=SlackConfig(
            mode=values["slack"]["mode"],
            port=values["slack"]["port"],
            # WebClient joins base_url and the method name: the trailing slash matters.
            api_url=values["slack"]["api_url"].rstrip("/") + "/",
            command=values["slack"]["command"],
            admins=tuple(values["slack"]["admins"]),
            host=values["slack"]["host"],
            client_id=values["slack"]["client_id"],
            scopes=tuple(values["slack"]["scopes"]),
            redirect_uri=values["slack"]["redirect_uri"],
            authorize_url=values["slack"]["authorize_url"],
        ),
        delivery=DeliveryConfig(**values["delivery"]),
        feedback=FeedbackConfig(**values["feedback"]),
        recommend=RecommendConfig(**values["recommend"]),
        metrics_port=values["metrics"]["port"],
        metrics_host=values["metrics"]["host"],
        storage_busy_timeout=values["storage"]["busy_timeout_seconds"],
        match_processes=values["matching"]["processes"],
        match_worker=values["matching"]["worker_process"],
        loop_watchdog_ms=values["debug"]["loop_watchdog_ms"],
        discord=DiscordConfig(
            api_base=values["discord"]["api_base"].rstrip("/"),
            dev_guild_id=values["discord"]["dev_guild_id"],
            message_content=values["discord"]["message_content"],
            gateway_url=values["discord"]["gateway_url"],
            **_shards(values["discord"]["shards"], values["discord"]["shard_ids"]),
            requests_per_second=values["discord"]["requests_per_second"],
        ),
    )


def _shards(shards: Any, shard_ids: list[int]) -> dict[str, Any]:
    """[discord] shards and shard_ids, checked together: ids need a fixed count, and each is below it."""
    if shard_ids and shards == "auto":
        raise ConfigError('[discord] shard_ids needs a number of shards: set [discord] shards = N (the same '
                          "N in every process), not \"auto\"")
    if shard_ids and max(shard_ids) >= shards:
        raise ConfigError(f"[discord] shard_ids: shard {max(shard_ids)} does not exist with shards = {shards} "
                          f"(ids go from 0 to {shards - 1})")
    return {"shards": None if shards == "auto" else shards, "shard_ids": tuple(sorted(shard_ids))}


def _source_config(values: dict[str, Any]) -> SourceConfig:
    settings = {key: value.rstrip("/") if key == "base_url" else tuple(value) if isinstance(value, list) else value
                for key, value in values.items() if key not in ("enabled", "interval_minutes")}
    return SourceConfig(values["enabled"], values["interval_minutes"], settings)


def find_config_file(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    source: Mapping[str, str] = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if source.get("PAPERS_BOT_CONFIG"):
        return Path(source["PAPERS_BOT_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


def load_config(explicit: str | None = None, env: dict[str, str] | None = None) -> Config:
    path = find_config_file(explicit, env)
    secrets = Secrets.from_env(env)
    if path is None:
        return parse_config({}, secrets)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, secrets, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
