"""When digests are due: pure functions of the channel settings and the time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from .models import WEEKDAYS, ChannelSettings

# Papers one digest message lists: what Slack's and Discord's size limits hold in full (a
# message marks every paper in it as sent, so each must show). A burst or a scheduled digest
# past that is one message that counts the rest.
DIGEST_MAX = 20

_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_time(text: str) -> str | None:
    """'9:05' -> '09:05'; None if it is not a 24-hour time."""
    found = _TIME.match(text.strip())
    return f"{int(found.group(1)):02d}:{found.group(2)}" if found else None


def parse_weekday(text: str) -> str | None:
    text = text.strip().lower()[:3]
    return text if text in WEEKDAYS else None


def zone(name: str) -> ZoneInfo | None:
    """The time zone called `name` (IANA, e.g. Europe/Berlin), or None if there is none."""
    if not name or len(name) > 64 or ".." in name or name.startswith("/"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


# Names in the zoneinfo tree that are no place's zone: `localtime` links to the machine's own
# zone (/etc/localtime), `posixrules` to whichever one the distribution chose, and the `posix/`
# and `right/` trees (copies, and variants counting leap seconds) are on some machines only.
# A channel set to one would get its digests at other hours on another machine, or none.
_MACHINE_NAMES = frozenset({"localtime", "posixrules"})
_MACHINE_TREES = ("posix/", "right/")


def machine_zone(name: str) -> bool:
    """True for a zone name whose meaning depends on the machine (`localtime`, `posixrules`,
    `posix/...`, `right/...`): no channel is set to one."""
    folded = name.casefold()
    return folded in _MACHINE_NAMES or folded.startswith(_MACHINE_TREES)


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """Every IANA zone name this machine knows, sorted (read from the zoneinfo tree once), less
    those that depend on the machine and `Factory` (a placeholder, "-00", no place's time)."""
    return tuple(sorted(n for n in available_timezones() if not machine_zone(n) and n != "Factory"))


def canonical_zone(name: str) -> str | None:
    """The IANA name `name` means, spelt as IANA does (`europe/berlin` is Europe/Berlin, `utc`
    is UTC: people type them so, and a case-insensitive file system would load them as typed
    and store a name another machine cannot read); None if it names no zone, or one that
    depends on the machine (`localtime`) or is no place's (`Factory`)."""
    if machine_zone(name) or name.casefold() == "factory":
        return None
    if name in zone_names():
        return name
    folded = name.casefold()
    spelt = next((known for known in zone_names() if known.casefold() == folded), None)
    if spelt is not None:
        return spelt
    return name if zone(name) is not None else None


def suggest_zones(name: str, limit: int = 3) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, zone_names(), n=limit, cutoff=0.6)


def next_digest(settings: ChannelSettings, after: datetime) -> datetime:
    """The first scheduled digest time strictly after `after` (returned in UTC)."""
    tz = zone(settings.timezone) or timezone.utc
    hour, minute = map(int, settings.digest_time.split(":"))
    local = after.astimezone(tz)
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    step = timedelta(days=1)
    for _ in range(9):  # at most a week and a bit ahead
        if candidate > local and (settings.mode != "weekly" or WEEKDAYS[candidate.weekday()] == settings.digest_day):
            # Re-localize: the wall-clock time is what the user asked for, across DST changes.
            naive = candidate.replace(tzinfo=None)
            return naive.replace(tzinfo=tz).astimezone(timezone.utc)
        candidate = (candidate.replace(tzinfo=None) + step).replace(tzinfo=tz)
    raise AssertionError("no digest time found within nine days")


def digest_due(settings: ChannelSettings, now: datetime) -> datetime | None:
    """The scheduled time of a digest that is due now, or None.

    The schedule counts from the previous digest, or from when the digest was set up,
    so turning digests on never sends one for the past. After slots missed (the bot down
    for days, a pause) it is the latest of them: one digest, not one a sweep for each.
    """
    if settings.mode == "instant" or settings.paused:
        return None
    since = settings.last_digest_at or settings.updated_at
    if since is None:
        return None
    due = next_digest(settings, since)
    if due > now:
        return None
    while (later := next_digest(settings, due)) <= now:
        due = later
    return due
