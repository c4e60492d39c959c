"""Operator tasks: backfill the store with past listings, export and import channel setups."""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Sequence, TextIO

from storage import StoreContract

from .digest import canonical_zone, parse_time, parse_weekday
from .errors import ImportFileError, QueryError, SourceError
from .like import like_query
from .lookup import PaperLookup
from .models import DIGEST_MODES, ChannelRef, ChannelSettings, MostSavedSchedule, Paper
from .query import normalize_query
from .sources import PaperSource, spec
from .sources.ids import impossible_arxiv_id
from .text import plural

log = logging.getLogger(__name__)

# ---- backfill --------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal, plain lines elsewhere."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        end = "\r" if self.stream.isatty() and self.done < self.total else "\n"
        self.stream.write(f"backfill [{bar}] {self.done}/{self.total} {label}{end}")
        self.stream.flush()


@dataclass
class BackfillReport:
    stored: dict[str, int]  # newly stored papers per source
    failed: list[tuple[str, date, str]]  # (source, day, reason) of every day that could not be fetched
    left_to_poller: list[str]  # what was not asked for, and why

    def lines(self) -> list[str]:
        counts = [f"{count} {'new papers ' if not i else ''}from {_label(name)}"
                  for i, (name, count) in enumerate(self.stored.items())]
        stored = " and ".join(filter(None, (", ".join(counts[:-1]), counts[-1]))) if counts else "nothing"
        out = [f"backfill: stored {stored}"]
        out += [f"backfill: not fetched: {note}" for note in self.left_to_poller]
        if self.failed:
            out.append(f"backfill: {plural(len(self.failed), 'day')} failed "
                       "(run the backfill again to retry; stored papers are never doubled):")
            out += [f"  {source} {day}: {reason}" for source, day, reason in self.failed]
        return out


def _label(name: str) -> str:
    found = spec(name)
    return found.label if found else name


async def backfill(
    store: StoreContract,
    sources: Sequence[PaperSource],
    *,
    days: int,
    today: date,
    now: datetime,
    progress: Progress | None = None,
) -> BackfillReport:
    """Store the listings of the `days` days before `today` from each of `sources`. Nothing is posted.

    Each source plans its days (Hugging Face: one daily list per day, not today's; arXiv:
    API pages of the configured categories by submission date, ending a few days back,
    since newer papers are the poller's) and paces its own requests. Returns what was
    stored per source, every day that failed with its reason, and what was left out.
    """
    plans = [(source, source.backfill_plan(days, today)) for source in sources]
    progress = progress or Progress(sum(len(plan.days) for _, plan in plans))
    report = BackfillReport({source.name: 0 for source in sources}, [], [])
    report.left_to_poller += [plan.note for _, plan in plans if plan.note]
    for source, plan in plans:
        for day in plan.days:
            label = f"{source.name} {day}"
            try:
                papers = await source.fetch_day(day)
            except SourceError as exc:
                report.failed.append((source.name, day, exc.reason))
                progress.step(f"{label}: failed ({exc.reason})")
                continue
            report.stored[source.name] += _store(store, papers, now)
            progress.step(f"{label}: {len(papers)} {plan.counted}")
    if sum(report.stored.values()):
        store.index_paper_words()  # preview's word index: done here, not by the first preview
    return report


def _store(store: StoreContract, papers: list[Paper], now: datetime) -> int:
    # History is stored as listed but never matched: subscriptions only get what comes next.
    return len(store.add_papers(papers, now))


# ---- export / import ---------------------------------------------------------------------

def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string: same quotes, and every escape JSON
    # emits (\" \\ \n \t \uXXXX ...) is one TOML accepts.
    return json.dumps(text)


def export_toml(store: StoreContract, now: datetime) -> str:
    """Every channel's settings and subscriptions, as TOML a lab can keep in git."""
    settings = {s.channel: s for s in store.all_channel_settings()}
    subs: dict[ChannelRef, list[str]] = {}
    for sub in store.subscriptions():
        subs.setdefault(sub.channel, []).append(sub.query)
    most_saved = {m.channel: m for m in store.most_saved_schedules()}
    lines = [f"# papers-bot channels and subscriptions, exported {now.isoformat(timespec='seconds')}",
             "# Load with: papers-bot import FILE (adds what is missing, updates settings)."]
    for channel in sorted(set(settings) | set(subs) | set(most_saved), key=lambda c: c.key):
        s = settings.get(channel, ChannelSettings(channel))
        lines += ["", "[[channel]]", f"channel = {_toml_string(channel.key)}", f"mode = {_toml_string(s.mode)}",
                  f"digest_time = {_toml_string(s.digest_time)}", f"digest_day = {_toml_string(s.digest_day)}",
                  f"timezone = {_toml_string(s.timezone)}", f"paused = {'true' if s.paused else 'false'}"]
        weekly = most_saved.get(channel)  # the weekly most-saved digest: "DAY HH:MM", or "off"
        lines += [f"most_saved = {_toml_string(f'{weekly.day} {weekly.time}' if weekly else 'off')}",
                  f"followups = {'true' if store.followups_enabled(channel) else 'false'}",
                  "subscriptions = ["]
        lines += [f"    {_toml_string(q)}," for q in subs.get(channel, [])]
        lines.append("]")
    return "\n".join(lines) + "\n"


@dataclass
class ImportReport:
    channels: int = 0
    added: int = 0
    present: int = 0

    def line(self) -> str:
        return (f"imported {plural(self.channels, 'channel')}: "
                f"{plural(self.added, 'subscription')} added, {self.present} already present")


_FIELDS = {"channel", "mode", "digest_time", "digest_day", "timezone", "paused", "subscriptions", "most_saved",
           "followups"}


_Planned = tuple[ChannelSettings, list[str], MostSavedSchedule | str | None, bool | None]  # an entry, checked


def import_toml(store: StoreContract, text: str, now: datetime, *, limit: int | None = None) -> ImportReport:
    """Apply an export: all or nothing, and running it twice changes nothing more.

    `limit` is [limits] max_subscriptions_per_channel: a channel that would go over it
    stops the import (checked in the same transaction as the inserts). A like: example the
    store lacks stops it too, as `subscribe` refuses it (`look_up_examples` first stores those
    the sources know, as `subscribe` does)."""
    planned = _plan(text)
    for where, query, paper_id in _examples(planned):
        if store.get_paper(paper_id) is None:
            unknown = impossible_arxiv_id(paper_id) or f"the example {paper_id} is unknown (not stored)"
            raise ImportFileError(f"{where}: subscription {query[:60]!r}: {unknown}")
    report = ImportReport(channels=len(planned))
    with store.transaction():
        for settings, queries, weekly, followups in planned:
            if followups is not None and followups != store.followups_enabled(settings.channel):
                store.set_followups(settings.channel, followups, now)
            if isinstance(weekly, MostSavedSchedule) or weekly == "off":
                store.set_most_saved_schedule(settings.channel, weekly if isinstance(weekly, MostSavedSchedule)
                                              else None, now)
            current = store.channel_settings(settings.channel)
            if current.mode == settings.mode and current.last_digest_at:
                settings = replace(settings, last_digest_at=current.last_digest_at)
            else:
                settings = replace(settings, last_digest_at=now)  # no digest for the past
            store.save_channel_settings(settings, now)
            for query in queries:
                subscribed = store.add_subscription(settings.channel, query, "import", now, limit=limit)
                if subscribed.subscription is None:
                    raise ImportFileError(f"channel {settings.channel.key} would have more than {limit} subscriptions "
                                       "([limits] max_subscriptions_per_channel)")
                report.added += subscribed.created
                report.present += not subscribed.created
    return report


async def look_up_examples(store: StoreContract, text: str, lookup: PaperLookup, now: datetime) -> int:
    """Store the like: examples of the file's subscriptions that the store lacks, looked up as
    `subscribe` looks them up (Hugging Face, then the arXiv API); how many were stored.

    Raises ImportFileError for the first one that cannot be an arXiv id, that no source
    knows, or that could not be looked up now: the words `subscribe` answers with."""
    wanted: dict[str, tuple[str, str]] = {}
    for where, query, paper_id in _examples(_plan(text)):
        if paper_id not in wanted and store.get_paper(paper_id) is None:
            wanted[paper_id] = (where, query)
    for paper_id, (where, query) in wanted.items():
        if (impossible := impossible_arxiv_id(paper_id)) is not None:
            raise ImportFileError(f"{where}: subscription {query[:60]!r}: {impossible}")
    try:  # all at once: arXiv's one request for up to 100, not one every 3 s each
        found = await lookup.fetch_many(list(wanted)) if wanted else {}
    except SourceError as exc:
        where, query = next(iter(wanted.values()))
        raise ImportFileError(f"{where}: subscription {query[:60]!r}: could not look up the example"
                              f"{'s' if len(wanted) > 1 else ''} {', '.join(wanted)} right now ({exc.reason}); "
                              "try again later") from None
    for paper_id, (where, query) in wanted.items():
        if paper_id not in found:
            raise ImportFileError(f"{where}: subscription {query[:60]!r}: the example {paper_id} is unknown "
                                  f"(neither {' nor '.join(lookup.labels())} knows it)")
    if found:
        store.add_papers(list(found.values()), now, listed=False)
    return len(found)


def _examples(planned: list[_Planned]) -> list[tuple[str, str, str]]:
    """(where, query, example id) of each like: example of the planned subscriptions."""
    found = []
    for settings, queries, *_ in planned:
        for query in queries:
            like = like_query(query)
            found += [(f"channel {settings.channel.key}", query, i) for i in (like.examples if like else ())]
    return found


def _plan(text: str) -> list[_Planned]:
    """The file's entries, checked (ImportFileError names the first problem); nothing written."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImportFileError(f"not valid TOML: {exc}") from None
    unknown = set(data) - {"channel"}
    if unknown:
        raise ImportFileError(f"unknown top-level key {sorted(unknown)[0]!r} (expected [[channel]] tables)")
    entries = data.get("channel", [])
    if not isinstance(entries, list):
        raise ImportFileError("channel must be [[channel]] tables (an array of them)")
    planned = [_check_entry(i, entry) for i, entry in enumerate(entries, start=1)]
    first: dict[ChannelRef, int] = {}
    for i, (settings, *_rest) in enumerate(planned, start=1):
        # Twice, the second entry's settings would silently replace the first's.
        if (seen := first.setdefault(settings.channel, i)) != i:
            raise ImportFileError(f"channel {settings.channel.key}: listed twice (entries {seen} and {i})")
    return planned


def _check_entry(index: int, entry: object) -> tuple[ChannelSettings, list[str], MostSavedSchedule | str | None,
                                                     bool | None]:
    where = f"channel entry {index}"
    if not isinstance(entry, dict):
        raise ImportFileError(f"{where} is not a table")
    extra = set(entry) - _FIELDS
    if extra:
        raise ImportFileError(f"{where}: unknown key {sorted(extra)[0]!r}")
    try:
        channel = ChannelRef.parse(str(entry.get("channel", "")))
    except ValueError as exc:
        raise ImportFileError(f"{where}: {exc}") from None
    where = f"channel {channel.key}"
    mode = entry.get("mode", "instant")
    time = parse_time(str(entry.get("digest_time", "09:00")))
    day = parse_weekday(str(entry.get("digest_day", "mon")))
    tz = str(entry.get("timezone", "UTC"))
    paused = entry.get("paused", False)
    if mode not in DIGEST_MODES:
        raise ImportFileError(f"{where}: mode must be one of {', '.join(DIGEST_MODES)}")
    if time is None or day is None:
        raise ImportFileError(f"{where}: digest_time must be HH:MM and digest_day a weekday")
    spelt = canonical_zone(tz)  # what `timezone` accepts: not `localtime` (each machine's own)
    if spelt is None:
        raise ImportFileError(f"{where}: unknown time zone {tz!r}")
    if not isinstance(paused, bool):
        raise ImportFileError(f"{where}: paused must be true or false")
    followups = entry.get("followups")  # absent: left as it is
    if followups is not None and not isinstance(followups, bool):
        raise ImportFileError(f"{where}: followups must be true or false")
    queries = entry.get("subscriptions", [])
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise ImportFileError(f"{where}: subscriptions must be a list of strings")
    normalized = []
    for query in queries:
        try:
            normalized.append(normalize_query(query))
        except QueryError as exc:
            raise ImportFileError(f"{where}: subscription {query[:60]!r}: {exc}") from None
    settings = ChannelSettings(channel, mode=mode, digest_time=time, digest_day=day, timezone=spelt, paused=paused)
    return settings, normalized, _most_saved(where, channel, entry.get("most_saved")), followups


def _most_saved(where: str, channel: ChannelRef, value: object) -> MostSavedSchedule | str | None:
    """`most_saved = "DAY HH:MM"` or "off"; absent (None): left as it is."""
    if value is None or value == "off":
        return value if value is None else "off"
    day_text, _, time_text = str(value).strip().partition(" ")
    day, time = parse_weekday(day_text), parse_time(time_text)
    if not isinstance(value, str) or day is None or time is None:
        raise ImportFileError(f'{where}: most_saved must be "DAY HH:MM" (like "mon 09:00") or "off"')
    return MostSavedSchedule(channel, day, time)
