import io
from datetime import timedelta

from bot.adapters import ConsoleAdapter
from bot.dispatch import MAX_ATTEMPTS, Dispatcher, retry_delay
from bot.models import ChannelRef, Match, OutboxCounts, PostResult

from .fakes import RecordingAdapter, due_now, paper

ML = ChannelRef("console", "ml")
SLACK = ChannelRef("slack", "C1")


def queue(store, clock, paper_id="2410.00001", channel=ML, title="Latent Diffusion"):
    store.add_papers([paper(paper_id, title, authors=("Ada Example",))], clock())
    store.enqueue(paper_id, [Match(1, channel, "diffusion", ("diffusion in title",))], clock())


async def test_due_deliveries_are_posted_as_cards_and_marked_sent(store, clock):
    queue(store, clock)
    adapter = RecordingAdapter()
    report = await Dispatcher(store, {"console": adapter}, clock).dispatch()
    assert report.sent == 1 and report.line() == "delivered: 1 sent, 0 to retry, 0 failed"
    (channel, card), = adapter.posts
    assert channel == ML and card.title == "Latent Diffusion" and card.reason == "#1 `diffusion`: diffusion in title"
    assert store.delivery_counts() == OutboxCounts(sent=1)
    assert store.db.execute("SELECT message_id FROM deliveries").fetchone()[0] == "m1"
    assert (await Dispatcher(store, {"console": adapter}, clock).dispatch()).sent == 0  # never twice


async def test_console_adapter_prints_a_readable_card(store, clock):
    queue(store, clock)
    out = io.StringIO()
    await Dispatcher(store, {"console": ConsoleAdapter(out)}, clock).dispatch()
    text = out.getvalue()
    assert "[console:ml] Latent Diffusion" in text
    assert "Ada Example" in text and "arXiv: https://arxiv.org/abs/2410.00001" in text
    assert "Matched #1 `diffusion`: diffusion in title" in text


async def test_retryable_failures_back_off_then_succeed(store, clock):
    queue(store, clock)
    adapter = RecordingAdapter(results=[PostResult(ok=False, error="HTTP 503", retryable=True)])
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    first = await dispatcher.dispatch()
    assert first.retrying == 1
    assert (await dispatcher.dispatch()).sent == 0  # not due yet
    clock.advance(seconds=retry_delay(1).total_seconds())
    assert (await dispatcher.dispatch()).sent == 1
    assert len(adapter.posts) == 2


async def test_permanent_failures_and_too_many_attempts_give_up(store, clock):
    queue(store, clock, "2410.00001")
    queue(store, clock, "2410.00002")
    results = [PostResult(ok=False, error="channel_not_found", retryable=False)]
    results += [PostResult(ok=False, error="HTTP 500", retryable=True)] * MAX_ATTEMPTS
    adapter = RecordingAdapter(results=results)
    dispatcher = Dispatcher(store, {"console": adapter}, clock)
    for _ in range(MAX_ATTEMPTS):
        await dispatcher.dispatch()
        clock.advance(hours=2)
    assert store.delivery_counts() == OutboxCounts(failed=2)
    assert len(adapter.posts) == 1 + MAX_ATTEMPTS


async def test_an_adapter_exception_becomes_a_retry(store, clock, caplog):
    queue(store, clock)
    adapter = RecordingAdapter(results=[RuntimeError("boom")])
    report = await Dispatcher(store, {"console": adapter}, clock).dispatch()
    assert report.retrying == 1 and "raised" in caplog.text


async def test_deliveries_without_an_adapter_wait_in_the_outbox(store, clock, caplog):
    queue(store, clock, channel=SLACK)
    report = await Dispatcher(store, {"console": RecordingAdapter()}, clock).dispatch()
    assert report.waiting == 1 and "no slack adapter is running" in caplog.text
    assert "1 waiting for an adapter" in report.line()
    assert len(due_now(store, clock())) == 1


def test_retry_delay_grows_and_is_capped():
    assert retry_delay(1) == timedelta(seconds=30)
    assert retry_delay(2) == timedelta(seconds=60)
    assert retry_delay(20) == timedelta(hours=1)


async def test_a_burst_is_capped_per_channel_and_the_rest_is_one_digest(store, clock):
    for i in range(1, 26):
        queue(store, clock, f"2410.{i:05d}", title=f"Paper {i}")
    queue(store, clock, "2410.99999", channel=ChannelRef("console", "other"), title="Elsewhere")
    adapter = RecordingAdapter()
    digests = []

    async def post_digest(digest):
        digests.append(digest)
        return PostResult(ok=True, message_id="digest-1")

    adapter.post_digest = post_digest
    report = await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=10).dispatch()
    assert report.sent == 26
    ml_cards = [card.title for channel, card in adapter.posts if channel == ML]
    assert ml_cards == [f"Paper {i}" for i in range(1, 11)]
    (digest,) = digests
    assert digest.channel == ML and digest.title == "15 more new papers for this channel"
    assert [c.title for c in digest.cards] == [f"Paper {i}" for i in range(11, 26)]
    assert [card.title for channel, card in adapter.posts if channel != ML] == ["Elsewhere"]
    assert store.delivery_counts() == OutboxCounts(sent=26)  # nothing dropped


async def test_a_failed_overflow_digest_returns_to_the_outbox(store, clock):
    for i in range(1, 4):
        queue(store, clock, f"2410.{i:05d}")
    adapter = RecordingAdapter()

    async def post_digest(digest):
        return PostResult(ok=False, error="HTTP 503", retryable=True)

    adapter.post_digest = post_digest
    report = await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=1).dispatch()
    assert report.sent == 1 and report.retrying == 2
    assert store.count_pending() == 2


async def test_a_big_overflow_is_one_digest_that_shows_every_paper_it_marks_sent(store, clock):
    from bot.dispatch import DIGEST_MAX

    for i in range(1, 2 + 2 * DIGEST_MAX + 5):
        queue(store, clock, f"2410.{i:05d}", title=f"Paper {i}")
    adapter = RecordingAdapter()
    digests = []

    async def post_digest(digest):
        digests.append(digest)
        return PostResult(ok=True, message_id=f"d{len(digests)}")

    adapter.post_digest = post_digest
    await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=1).dispatch()
    # 1 card, one digest of DIGEST_MAX, and the rest counted in it, not posted (never a flood of digests).
    (digest,) = digests
    assert len(digest.cards) == DIGEST_MAX and digest.note.startswith(f"and {DIGEST_MAX + 5} more papers matched")
    assert store.delivery_counts() == OutboxCounts(sent=1 + DIGEST_MAX, overflow=DIGEST_MAX + 5)
