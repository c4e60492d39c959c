"""Digests: sent at the channel's local time, with everything matched since the last one, once."""

import io
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from bot.adapters import ConsoleAdapter
from bot.digest import digest_due, next_digest, parse_time, parse_weekday, zone
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, ChannelSettings, Match, PostResult

from .fakes import RecordingAdapter, paper

UTC = timezone.utc
ML = ChannelRef("console", "ml")


def at(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    "mode, day, time, tz, after, expected",
    [
        ("daily", "mon", "09:00", "UTC", at(2026, 11, 27, 8, 0), at(2026, 11, 27, 9, 0)),
        ("daily", "mon", "09:00", "UTC", at(2026, 11, 27, 9, 0), at(2026, 11, 28, 9, 0)),  # strictly after
        ("daily", "mon", "09:00", "Europe/Berlin", at(2026, 11, 27, 7, 0), at(2026, 11, 27, 8, 0)),  # CET, UTC+1
        ("daily", "mon", "09:00", "Europe/Berlin", at(2026, 7, 1, 6, 0), at(2026, 7, 1, 7, 0)),  # CEST, UTC+2
        ("daily", "mon", "09:00", "America/New_York", at(2026, 3, 7, 15, 0), at(2026, 3, 8, 13, 0)),  # DST starts
        ("weekly", "mon", "09:00", "UTC", at(2026, 11, 27, 12, 0), at(2026, 11, 30, 9, 0)),  # Fri -> Mon
        ("weekly", "fri", "18:30", "Asia/Tokyo", at(2026, 11, 27, 8, 0), at(2026, 11, 27, 9, 30)),
        ("weekly", "fri", "18:30", "Asia/Tokyo", at(2026, 11, 27, 9, 30), at(2026, 12, 4, 9, 30)),
    ],
)
def test_next_digest_follows_local_time(mode, day, time, tz, after, expected):
    settings = ChannelSettings(ML, mode=mode, digest_day=day, digest_time=time, timezone=tz)
    assert next_digest(settings, after) == expected


def test_parsers():
    assert parse_time("9:05") == "09:05" and parse_time("23:59") == "23:59"
    assert parse_time("24:00") is None and parse_time("9") is None and parse_time("09:60") is None
    assert parse_weekday("Monday") == "mon" and parse_weekday("xyz") is None
    assert zone("Europe/Berlin") is not None and zone("Not/AZone") is None and zone("") is None


def test_due_counts_from_the_last_digest_or_the_setup():
    base = ChannelSettings(ML, mode="daily", digest_time="09:00", updated_at=at(2026, 11, 27, 10, 0))
    assert digest_due(base, at(2026, 11, 28, 8, 59)) is None
    assert digest_due(base, at(2026, 11, 28, 9, 0)) == at(2026, 11, 28, 9, 0)
    done = replace(base, last_digest_at=at(2026, 11, 28, 9, 0))
    assert digest_due(done, at(2026, 11, 28, 20, 0)) is None
    assert digest_due(replace(base, paused=True), at(2026, 12, 1)) is None
    assert digest_due(base, at(2026, 12, 1, 12, 0)) == at(2026, 12, 1, 9, 0)  # the latest slot missed
    assert digest_due(replace(base, mode="instant"), at(2026, 12, 1)) is None


@pytest.fixture
def digest_channel(store, clock):
    clock.now = at(2026, 11, 27, 12, 0)
    settings = ChannelSettings(ML, mode="daily", digest_time="09:00", timezone="Europe/Berlin",
                               last_digest_at=clock())
    store.save_channel_settings(settings, clock())
    return settings


def match_paper(store, clock, paper_id, title):
    store.add_papers([paper(paper_id, title)], clock())
    store.enqueue(paper_id, [Match(1, ML, "x", ("x in title",))], clock())


async def test_digest_goes_out_at_local_time_with_everything_once(store, clock, digest_channel):
    adapter = RecordingAdapter()
    digests = []

    async def post_digest(digest):
        digests.append(digest)
        return PostResult(ok=True, message_id="d1")

    adapter.post_digest = post_digest
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    match_paper(store, clock, "2411.00001", "First")
    match_paper(store, clock, "2411.00002", "Second")
    assert (await dispatcher.dispatch()).sent == 0  # digest channels get no instant cards
    clock.now = at(2026, 11, 28, 7, 59)  # 08:59 in Berlin
    assert (await dispatcher.dispatch_digests()).sent == 0
    clock.now = at(2026, 11, 28, 8, 0)  # 09:00 in Berlin
    report = await dispatcher.dispatch_digests()
    assert report.sent == 2 and len(digests) == 1
    assert [c.title for c in digests[0].cards] == ["First", "Second"]
    assert digests[0].title == "Daily digest: 2 new papers for this channel"  # not as a burst's
    assert (await dispatcher.dispatch_digests()).sent == 0 and len(digests) == 1  # once
    match_paper(store, clock, "2411.00003", "Third")
    clock.now = at(2026, 11, 29, 8, 0)
    await dispatcher.dispatch_digests()
    assert [c.title for c in digests[1].cards] == ["Third"]  # only what came since
    assert adapter.posts == []


async def test_after_days_down_one_digest_goes_out_for_the_latest_slot_not_one_per_missed_slot(
        store, clock, digest_channel):
    # Down from Friday noon to Monday noon (three 09:00 slots in Berlin missed), and the papers the
    # restart's polls bring arrive between sweeps: the first sweep sent Saturday's digest, the
    # next Sunday's, the next Monday's: three digest messages within a minute of the restart.
    digests = []

    async def post_digest(digest):
        digests.append(digest)
        return PostResult(ok=True, message_id=f"d{len(digests)}")

    adapter = RecordingAdapter()
    adapter.post_digest = post_digest
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    match_paper(store, clock, "2411.00001", "Before the restart")
    clock.now = at(2026, 11, 30, 11, 0)  # Monday noon in Berlin
    assert (await dispatcher.dispatch_digests()).sent == 1
    match_paper(store, clock, "2411.00002", "From the first poll after it")
    for _ in range(3):  # the next sweeps, seconds apart
        clock.advance(seconds=30)
        assert (await dispatcher.dispatch_digests()).sent == 0
    assert len(digests) == 1 and store.channel_settings(ML).last_digest_at == at(2026, 11, 30, 8, 0)
    clock.now = at(2026, 12, 1, 8, 0)  # Tuesday 09:00 in Berlin: the next one, with the rest
    assert (await dispatcher.dispatch_digests()).sent == 1
    assert [c.title for c in digests[1].cards] == ["From the first poll after it"]


async def test_an_empty_slot_sends_nothing_and_moves_on(store, clock, digest_channel):
    adapter = RecordingAdapter()
    adapter.post_digest = None  # would fail if called
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    clock.now = at(2026, 11, 28, 8, 0)
    assert (await dispatcher.dispatch_digests()).sent == 0
    assert store.channel_settings(ML).last_digest_at == at(2026, 11, 28, 8, 0)


async def test_a_failed_digest_loses_nothing(store, clock, digest_channel):
    calls = []

    async def post_digest(digest):
        calls.append(digest)
        return PostResult(ok=False, error="HTTP 500", retryable=True) if len(calls) == 1 else PostResult(ok=True)

    adapter = RecordingAdapter()
    adapter.post_digest = post_digest
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    match_paper(store, clock, "2411.00001", "First")
    clock.now = at(2026, 11, 28, 8, 0)
    assert (await dispatcher.dispatch_digests()).retrying == 1
    clock.now = at(2026, 11, 28, 8, 1)
    assert (await dispatcher.dispatch_digests()).sent == 1
    assert [c.title for c in calls[1].cards] == ["First"]


async def test_paused_digest_channels_wait(store, clock, digest_channel):
    store.save_channel_settings(replace(digest_channel, paused=True), clock())
    match_paper(store, clock, "2411.00001", "First")
    dispatcher = Dispatcher(store, {"console": RecordingAdapter()}, clock)
    clock.now = at(2026, 12, 5, 8, 0)
    assert (await dispatcher.dispatch_digests()).sent == 0
    assert store.count_pending(ML) == 1


async def test_console_renders_a_digest_as_a_list(store, clock, digest_channel):
    out = io.StringIO()
    match_paper(store, clock, "2411.00001", "First \x1b[31mred")
    clock.now = at(2026, 11, 28, 8, 0)
    await Dispatcher(store, {"console": ConsoleAdapter(out)}, clock).dispatch_digests()
    text = out.getvalue()
    assert "[console:ml] Daily digest: 1 new paper for this channel" in text
    assert "• First [31mred (https://arxiv.org/abs/2411.00001)" in text and "\x1b" not in text
    assert 'Matched #1 `x`: x in title' in text


async def test_a_weekly_digest_says_it_is_the_weekly_digest(store, clock, digest_channel):
    # It was titled "1 new paper for this channel", as a burst's digest ("15 more new papers ...").
    store.save_channel_settings(replace(digest_channel, mode="weekly", digest_day="mon"), clock())
    out = io.StringIO()
    match_paper(store, clock, "2411.00001", "First")
    clock.now = at(2026, 11, 30, 8, 0)  # Monday, 09:00 in Berlin
    assert (await Dispatcher(store, {"console": ConsoleAdapter(out)}, clock).dispatch_digests()).sent == 1
    assert "[console:ml] Weekly digest: 1 new paper for this channel\n" in out.getvalue()


async def test_a_digest_to_a_gone_channel_pauses_it_instead_of_retrying_forever(store, clock, digest_channel):
    calls = []

    async def post_digest(digest):
        calls.append(digest)
        return PostResult(ok=False, error="is_archived", channel_gone=True)

    adapter = RecordingAdapter()
    adapter.post_digest = post_digest
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    match_paper(store, clock, "2411.00001", "First")
    clock.now = at(2026, 11, 28, 8, 0)
    assert (await dispatcher.dispatch_digests()).failed == 1
    settings = store.channel_settings(ML)
    assert settings.paused and settings.paused_reason == "is_archived"
    clock.now = at(2026, 12, 5, 8, 0)
    await dispatcher.dispatch_digests()
    assert len(calls) == 1 and store.count_pending(ML) == 1  # kept for when it is back
