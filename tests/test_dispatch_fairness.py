"""A burst reaches each channel as at most cards_per_cycle cards and one digest, however
many channels there are and however big the burst; the rest is counted, never a flood."""

import asyncio
from collections import Counter

import handlers
from bot.config import Secrets, parse_config
from bot.dispatch import DIGEST_MAX, Dispatcher
from bot.models import ChannelRef, ChannelSettings, Match, OutboxCounts, PostResult
from handlers.channel import bot_status

from .fakes import RecordingAdapter, paper

CARDS = 10


class Recorder(RecordingAdapter):
    """RecordingAdapter that also keeps digests; `digest_results` scripts their answers."""

    def __init__(self, results=None):
        super().__init__(results=results)
        self.digests = []
        self.digest_results: list[PostResult] = []

    async def post_digest(self, digest):
        self.digests.append(digest)
        if self.digest_results:
            return self.digest_results.pop(0)
        return PostResult(ok=True, message_id=f"d{len(self.digests)}")

    def cards_to(self, channel):
        return [card for to, card in self.posts if to == channel]


def burst(store, clock, channels, count, start=0):
    """`count` new papers, each matching every channel (as the poller queues them: paper by paper)."""
    ids = [f"2411.{i:05d}" for i in range(start, start + count)]
    store.add_papers([paper(i, f"Paper {i}") for i in ids], clock())
    for paper_id in ids:
        store.enqueue(paper_id, [Match(1, c, "diffusion", ("diffusion in title",)) for c in channels], clock())
    return ids


async def test_sixty_channels_each_get_their_cards_and_one_digest(store, clock):
    channels = [ChannelRef("console", f"c{n:02d}") for n in range(60)]
    burst(store, clock, channels, 20)
    adapter = Recorder()
    report = await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch()
    assert report.sent == 60 * 20 and report.overflow == 0
    assert Counter(to for to, _ in adapter.posts) == {c: CARDS for c in channels}
    assert Counter(d.channel for d in adapter.digests) == {c: 1 for c in channels}
    assert all(len(d.cards) == 20 - CARDS and d.note == "" for d in adapter.digests)
    for channel in channels:  # the oldest papers as cards, the rest in the digest: each paper once
        (digest,) = [d for d in adapter.digests if d.channel == channel]
        titles = [c.title for c in adapter.cards_to(channel)] + [c.title for c in digest.cards]
        assert titles == [f"Paper 2411.{i:05d}" for i in range(20)]
    clock.advance(hours=1)
    assert (await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch()).sent == 0


async def test_a_huge_burst_is_cards_and_one_digest_and_the_rest_is_counted_once(store, clock):
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 3000)
    adapter = Recorder()
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    report = await dispatcher.dispatch()
    assert report.sent == CARDS + DIGEST_MAX and report.overflow == 3000 - CARDS - DIGEST_MAX
    assert "2970 over a burst's cap" in report.line()
    assert len(adapter.posts) == CARDS
    (digest,) = adapter.digests
    assert len(digest.cards) == DIGEST_MAX and digest.title == "20 more new papers for this channel"
    assert digest.note.startswith("and 2,970 more papers matched, not posted")
    assert "/papers mute" in digest.note and "/papers search" in digest.note
    for _ in range(5):  # later sweeps send nothing more for this burst
        clock.advance(minutes=10)
        assert (await dispatcher.dispatch()).sent == 0
    assert len(adapter.posts) == CARDS and len(adapter.digests) == 1
    # Settled, not lost: every row accounted for, the overflow tied to the digest that counted it.
    assert store.delivery_counts() == OutboxCounts(sent=CARDS + DIGEST_MAX, overflow=2970)
    assert overflow_told_in(store, "d1") == 2970
    ctx = handlers.Context(store, parse_config({}, Secrets({})), clock=clock)
    assert "Queue: 0 pending, 30 sent, 0 failed, 2970 not posted (past a burst's cards and digest)" in bot_status(ctx)


async def test_no_channel_is_starved_by_another_channels_backlog(store, clock):
    big = ChannelRef("console", "big")
    small = [ChannelRef("console", f"small{n}") for n in range(5)]
    burst(store, clock, [big], 2000)  # older rows than anything the others get
    burst(store, clock, small, 3, start=5000)
    adapter = Recorder()
    await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch()
    for channel in small:
        assert [c.title for c in adapter.cards_to(channel)] == [f"Paper 2411.{i:05d}" for i in range(5000, 5003)]
    assert len(adapter.cards_to(big)) == CARDS and [d.channel for d in adapter.digests] == [big]
    assert store.count_pending() == 0


def overflow_told_in(store, message_id):
    """How many overflow rows the digest `message_id` counted."""
    return store.db.execute("SELECT count(*) FROM deliveries WHERE status = 'overflow' AND message_id IS ?",
                            [message_id]).fetchone()[0]


def decisions(store):
    return store.db.execute("SELECT paper_id, in_digest, status = 'overflow' FROM deliveries ORDER BY id").fetchall()


async def test_a_rate_limited_burst_is_decided_once(store, clock):
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 35)
    ok = PostResult(ok=True, message_id="m")
    adapter = Recorder(results=[ok, ok, ok, PostResult(ok=False, error="rate limited", retry_after=30)])
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    first = await dispatcher.dispatch()
    assert first.sent == 3 and first.retrying == 1 and adapter.digests == []  # the rest waits, as asked
    decided = decisions(store)
    for _ in range(4):
        clock.advance(seconds=31)
        await dispatcher.dispatch()
        assert decisions(store) == decided  # the overflow is not re-decided
    cards = [c.title for c in adapter.cards_to(ml)]
    assert sorted(set(cards)) == [f"Paper 2411.{i:05d}" for i in range(CARDS)]  # the limited one tried twice
    (digest,) = adapter.digests
    assert [c.title for c in digest.cards] == [f"Paper 2411.{i:05d}" for i in range(CARDS, CARDS + DIGEST_MAX)]
    assert digest.note.startswith("and 5 more papers matched")
    assert store.delivery_counts() == OutboxCounts(sent=CARDS + DIGEST_MAX, overflow=5)


async def test_what_arrives_while_a_full_burst_goes_out_is_counted_in_its_digest(store, clock):
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 40)
    ok = PostResult(ok=True, message_id="m")
    adapter = Recorder(results=[ok, PostResult(ok=False, error="rate limited", retry_after=30)])
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    await dispatcher.dispatch()
    burst(store, clock, [ml], 4, start=100)  # the next poll, while 9 cards and the digest are owed
    per_sweep = []
    for _ in range(4):
        before = len(adapter.posts)
        await dispatcher.dispatch()
        per_sweep.append(len(adapter.posts) - before)
        clock.advance(seconds=31)
    assert max(per_sweep) <= CARDS and len(adapter.digests) == 1
    assert adapter.digests[0].note.startswith("and 14 more papers matched")  # 10 of the burst, 4 since
    assert store.delivery_counts() == OutboxCounts(sent=CARDS + DIGEST_MAX, overflow=14)
    assert overflow_told_in(store, "d1") == 14


async def test_a_failed_digest_is_retried_as_the_same_one_digest(store, clock):
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 100)
    adapter = Recorder()
    adapter.digest_results = [PostResult(ok=False, error="HTTP 503", retryable=True)]
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    assert (await dispatcher.dispatch()).retrying == DIGEST_MAX
    clock.advance(minutes=5)
    await dispatcher.dispatch()
    first, second = adapter.digests
    assert first.cards == second.cards and first.note == second.note != ""
    assert store.delivery_counts() == OutboxCounts(sent=CARDS + DIGEST_MAX, overflow=100 - CARDS - DIGEST_MAX)
    assert overflow_told_in(store, "d2") == 70


async def test_a_new_burst_after_the_last_one_drained_gets_its_own_cards(store, clock):
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 40)
    adapter = Recorder()
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    await dispatcher.dispatch()
    clock.advance(days=1)
    burst(store, clock, [ml], 12, start=500)
    await dispatcher.dispatch()
    assert len(adapter.cards_to(ml)) == 2 * CARDS
    assert [len(d.cards) for d in adapter.digests] == [DIGEST_MAX, 2]
    assert adapter.digests[1].note == ""  # the first burst's overflow was already counted


async def test_a_scheduled_digest_is_one_message_too(store, clock):
    ml = ChannelRef("console", "ml")
    store.save_channel_settings(ChannelSettings(ml, mode="daily", digest_time="09:00", last_digest_at=clock()), clock())
    burst(store, clock, [ml], 75)
    adapter = Recorder()
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    clock.advance(days=1)
    report = await dispatcher.dispatch_digests()
    assert report.sent == DIGEST_MAX and report.overflow == 75 - DIGEST_MAX and adapter.posts == []
    (digest,) = adapter.digests
    assert digest.title == "Daily digest: 20 new papers for this channel"
    assert digest.note.startswith("and 55 more papers matched")
    assert store.delivery_counts() == OutboxCounts(sent=DIGEST_MAX, overflow=55)


async def test_an_old_outbox_with_a_long_digest_queue_is_not_a_flood(store, clock):
    # Rows the previous version moved to a digest without a limit: still one digest.
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 300)
    store.db.execute("UPDATE deliveries SET in_digest = 1")
    adapter = Recorder()
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    await dispatcher.dispatch()
    clock.advance(hours=1)
    await dispatcher.dispatch()
    assert adapter.posts == [] and len(adapter.digests) == 1
    assert store.delivery_counts() == OutboxCounts(sent=DIGEST_MAX, overflow=300 - DIGEST_MAX)


async def test_what_arrives_while_the_digest_is_being_sent_starts_the_next_burst(store, clock):
    # The digest's "and N more" is written when it is sent: nothing may be counted after that.
    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 35)
    adapter = Recorder()
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    during = []

    async def post_digest(digest):
        if not during:  # the next poll queues papers and its sweep runs while this digest is on its way
            burst(store, clock, [ml], 12, start=100)
            during.append(await dispatcher.dispatch())
        return await Recorder.post_digest(adapter, digest)

    adapter.post_digest = post_digest
    await dispatcher.dispatch()
    assert during[0].sent == 0 and during[0].overflow == 0  # decided nothing while the digest was in flight
    assert adapter.digests[0].note.startswith("and 5 more papers matched")
    await dispatcher.dispatch()
    assert len(adapter.cards_to(ml)) == 2 * CARDS and [len(d.cards) for d in adapter.digests] == [DIGEST_MAX, 2]
    assert store.delivery_counts() == OutboxCounts(sent=47 - 5, overflow=5)
    assert overflow_told_in(store, None) == 0


def test_resume_after_a_long_pause_says_what_the_burst_gives(store, clock):
    ml = ChannelRef("console", "ml")
    ctx = handlers.Context(store, parse_config({}, Secrets({})), clock=clock)
    asyncio.run(handlers.handle(ctx, handlers.request_from_text(ml, "u1", "pause")))
    burst(store, clock, [ml], 500)
    reply = asyncio.run(handlers.handle(ctx, handlers.request_from_text(ml, "u1", "resume")))
    assert reply.text == ("Resumed. 500 papers matched while paused: the best 10 as cards and 20 in a digest (most "
                          "upvoted first) will be posted now; the digest counts the other 470. Narrow busy "
                          "subscriptions with `/papers mute`.")
    small = ChannelRef("console", "small")
    asyncio.run(handlers.handle(ctx, handlers.request_from_text(small, "u1", "pause")))
    burst(store, clock, [small], 1, start=900)
    assert asyncio.run(handlers.handle(ctx, handlers.request_from_text(small, "u1", "resume"))).text == (
        "Resumed. 1 paper matched while paused will be posted now.")


async def test_a_digest_that_can_never_go_out_does_not_hold_the_channel(store, clock):
    # A digest refused for good (or failing MAX_ATTEMPTS times) is given up, as a card would be;
    # otherwise its burst would stay open and every later paper would only be counted.
    from bot.dispatch import MAX_ATTEMPTS

    ml = ChannelRef("console", "ml")
    burst(store, clock, [ml], 40)
    adapter = Recorder()
    adapter.digest_results = [PostResult(ok=False, error="invalid_blocks", retryable=False)]
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    assert (await dispatcher.dispatch()).failed == DIGEST_MAX
    burst(store, clock, [ml], 15, start=500)
    await dispatcher.dispatch()
    assert len(adapter.cards_to(ml)) == 2 * CARDS  # the next burst has its cards
    assert [len(d.cards) for d in adapter.digests] == [DIGEST_MAX, 5]
    assert adapter.digests[1].note.startswith("and 10 more papers matched")  # the first burst's count, still told
    assert store.delivery_counts() == OutboxCounts(sent=2 * CARDS + 5, failed=DIGEST_MAX, overflow=10)

    other = ChannelRef("console", "other")
    burst(store, clock, [other], 12, start=900)
    adapter.digest_results = [PostResult(ok=False, error="HTTP 500", retryable=True)] * MAX_ATTEMPTS
    for _ in range(MAX_ATTEMPTS):
        await dispatcher.dispatch()
        clock.advance(hours=2)
    assert store.db.execute("SELECT count(*) FROM deliveries WHERE channel = 'console:other' AND status = 'failed'"
                            ).fetchone()[0] == 2
