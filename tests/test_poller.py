import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from bot.models import ChannelRef
from bot.poller import Poller

from .fakes import FakeSource, due_now, paper, source_error

ML = ChannelRef("console", "ml")
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


async def test_new_matching_papers_are_queued(store, clock):
    store.add_subscription(ML, "diffusion", "u1", clock())
    source = FakeSource(papers=[paper("2410.00001", "Latent Diffusion"), paper("2410.00002", "Agents")])
    report = await Poller(store, clock).poll(source)
    assert (report.ok, report.listed, report.new, report.queued) == (True, 2, 2, 1)
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.00001"]
    assert report.line() == "fake: 2 listed, 2 new, 1 queued for delivery"


async def test_papers_stored_before_a_subscription_are_never_sent_to_it(store, clock):
    source = FakeSource(papers=[paper("2410.00001", "Latent Diffusion")])
    poller = Poller(store, clock)
    await poller.poll(source)
    clock.advance(hours=1)
    store.add_subscription(ML, "diffusion", "u1", clock())
    source.papers.append(paper("2410.00002", "Video diffusion"))
    report = await poller.poll(source)
    assert report.new == 1 and report.queued == 1
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.00002"]


async def test_the_same_paper_from_two_sources_is_queued_once(store, clock):
    store.add_subscription(ML, "diffusion", "u1", clock())
    poller = Poller(store, clock)
    arxiv = FakeSource("arxiv", [paper("2410.00001", "Diffusion", source="arxiv")])
    hf = FakeSource("huggingface", [paper("2410.00001", "Diffusion", source="huggingface", upvotes=5)])
    assert (await poller.poll(arxiv)).queued == 1
    assert (await poller.poll(hf)).queued == 0
    assert len(due_now(store, clock())) == 1
    assert store.get_paper("2410.00001").upvotes == 5


async def test_replacements_are_stored_but_not_announced(store, clock):
    store.add_subscription(ML, "diffusion", "u1", clock())
    source = FakeSource(papers=[paper("2009.13987", "Old diffusion paper", is_update=True)])
    report = await Poller(store, clock).poll(source)
    assert report.new == 1 and report.queued == 0
    assert store.get_paper("2009.13987") is not None


async def test_a_failing_source_is_reported_and_counted(store, clock):
    source = FakeSource()
    source.fail_with(source_error("HTTP 500 from http://127.0.0.1:1"))
    poller = Poller(store, clock)
    first = await poller.poll(source)
    second = await poller.poll(source)
    assert not first.ok and first.error == "HTTP 500 from http://127.0.0.1:1"
    assert second.failures == 2
    assert first.line() == "fake: FAILED: HTTP 500 from http://127.0.0.1:1"
    source.fail_with(None)
    assert (await poller.poll(source)).ok
    assert store.source_state("fake").consecutive_failures == 0


async def test_an_unexpected_exception_in_a_source_does_not_escape(store, clock, caplog):
    source = FakeSource()
    source.fail_with(KeyError("surprise"))
    report = await Poller(store, clock).poll(source)
    assert not report.ok and "unexpected error: KeyError" in report.error
    assert "unexpected error while fetching" in caplog.text


async def test_empty_listing_is_normal(store, clock):
    report = await Poller(store, clock).poll(FakeSource(papers=[]))
    assert report.ok and report.listed == 0


async def test_engine_follows_added_changed_and_removed_subscriptions(store, clock):
    poller = Poller(store, clock)
    source = FakeSource(papers=[])
    sub = store.add_subscription(ML, "diffusion", "u1", clock()).subscription
    await poller.poll(source)
    source.papers = [paper("2410.00001", "Video diffusion")]
    assert (await poller.poll(source)).queued == 1
    store.change_subscription_query(ML, sub.id, "diffusion -video")  # e.g. /papers mute 1 video
    source.papers = [paper("2410.00002", "Video diffusion again"), paper("2410.00003", "Image diffusion")]
    await poller.poll(source)
    # 2410.00001, queued before the mute and not posted yet, is not posted now either.
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.00003"]
    store.remove_subscription(ML, sub.id)
    source.papers = [paper("2410.00004", "Image diffusion, more")]
    assert (await poller.poll(source)).queued == 0
    assert len(poller.matcher) == 0


async def test_papers_listed_long_ago_are_stored_but_not_posted(store, clock):
    from datetime import timedelta

    store.add_subscription(ML, "diffusion", "u1", clock())
    today = clock().date()
    source = FakeSource(papers=[paper("2410.00001", "Diffusion, fresh", listed_on=today - timedelta(days=7)),
                                paper("2410.00002", "Diffusion, stale", listed_on=today - timedelta(days=8))])
    report = await Poller(store, clock, max_age_days=7).poll(source)
    assert report.new == 2 and report.queued == 1
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.00001"]
    assert store.get_paper("2410.00002") is not None


async def test_a_paper_crossing_an_upvote_threshold_is_delivered_then_once(store, clock):
    store.add_subscription(ML, "diffusion upvotes>=20", "u1", clock())
    store.add_subscription(ChannelRef("console", "late"), "diffusion", "u1", clock())
    hf = FakeSource("huggingface", [paper("2410.00001", "Diffusion", source="huggingface", upvotes=3,
                                          listed_on=clock().date())])
    poller = Poller(store, clock)
    clock.advance(minutes=1)
    assert (await poller.poll(hf)).queued == 1  # to #2 only: 3 upvotes are not 20
    store.add_subscription(ChannelRef("console", "newer"), "diffusion", "u1", clock() + timedelta(hours=1))
    clock.advance(hours=6)
    hf.papers = [paper("2410.00001", "Diffusion", source="huggingface", upvotes=25, listed_on=clock().date())]
    report = await poller.poll(hf)
    assert report.new == 0 and report.queued == 1
    channels = sorted(d.channel.channel_id for d in due_now(store, clock()))
    assert channels == ["late", "ml"]  # not "newer": it was created after the paper arrived
    hf.papers = [paper("2410.00001", "Diffusion", source="huggingface", upvotes=40, listed_on=clock().date())]
    assert (await poller.poll(hf)).queued == 0  # once


async def test_no_upvote_recheck_after_max_age(store, clock):
    store.add_subscription(ML, "diffusion upvotes>=20", "u1", clock())
    hf = FakeSource("huggingface", [paper("2410.00001", "Diffusion", source="huggingface", upvotes=3,
                                          listed_on=clock().date())])
    poller = Poller(store, clock, max_age_days=7)
    clock.advance(minutes=1)
    await poller.poll(hf)
    clock.advance(days=8)
    hf.papers = [paper("2410.00001", "Diffusion", source="huggingface", upvotes=90, listed_on=clock().date())]
    assert (await poller.poll(hf)).queued == 0


def test_a_sync_that_fails_on_the_way_reads_the_same_changes_again_next_time(store, clock, monkeypatch):
    # The engine's version moved before the adds: a sync that failed after reading the changes
    # (the recommender's read, an add) left those subscriptions out of the index for good, until
    # some other subscription changed.
    first = store.add_subscription(ML, "diffusion", "u1", clock()).subscription
    poller = Poller(store, clock)
    poller.sync_subscriptions()
    second = store.add_subscription(ML, "transformer", "u1", clock()).subscription
    assert first is not None and second is not None
    sync = poller.recommender.sync

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(poller.recommender, "sync", broken)
    with pytest.raises(sqlite3.OperationalError):
        poller.sync_subscriptions()
    monkeypatch.setattr(poller.recommender, "sync", sync)
    poller.sync_subscriptions()
    assert poller.matcher.ids() == {first.id, second.id}
    assert [m.subscription_id for m in poller.matcher.match(paper("2410.00002", "A transformer"))] == [second.id]


def test_no_garbage_collection_runs_while_a_big_index_is_built_and_it_is_frozen_after(store, clock, monkeypatch):
    # A full collection during the build scanned everything built so far with the GIL held:
    # the event loop stood still for up to 0.3 s at 100k subscriptions (bench.pipeline).
    import gc

    from bot.models import Subscription, SubscriptionChanges

    subs = [Subscription(i, ML, f"word{i}", "u1", clock()) for i in range(1, 10_002)]
    monkeypatch.setattr(store, "subscription_ids", lambda: {s.id for s in subs})
    monkeypatch.setattr(store, "subscriptions_changed_since", lambda version: SubscriptionChanges(tuple(subs), 1))
    from bot.matching import IndexedMatcher

    poller = Poller(store, clock)
    seen: list[bool] = []
    add = IndexedMatcher.add
    monkeypatch.setattr(IndexedMatcher, "add", lambda self, sub: (seen.append(gc.isenabled()), add(self, sub))[1])
    frozen = gc.get_freeze_count()
    try:
        poller.sync_subscriptions()
        assert set(seen) == {False} and len(seen) == len(subs)
        assert gc.isenabled() and gc.get_freeze_count() > frozen

        def broken(self, sub):
            raise RuntimeError("a bug while building")

        monkeypatch.setattr(IndexedMatcher, "add", broken)
        poller._version = 0
        with pytest.raises(RuntimeError):
            poller.sync_subscriptions()
        assert gc.isenabled()  # never left off
    finally:
        gc.enable()
        gc.unfreeze()


async def test_the_first_index_load_reads_the_subscriptions_with_no_garbage_collection(store, clock):
    # Reading 100k subscriptions makes as many objects before the index is built: full
    # collections on the way held the GIL, and so the event loop, 80 to 250 ms each (bench.pipeline).
    import gc

    from storage import Store

    store.add_subscription(ML, "diffusion", "u1", clock())
    collecting: list[bool] = []

    def open_store() -> Store:  # the worker thread's Store, as Poller opens it, watched
        worker = Store(store.path)
        read = worker.subscriptions_changed_since
        worker.subscriptions_changed_since = (  # type: ignore[method-assign]
            lambda version: (collecting.append(gc.isenabled()), read(version))[1])
        return worker

    poller = Poller(store, clock, open_store=open_store)
    try:
        await poller.load_index()
    finally:
        poller.close()
    assert collecting == [False] and gc.isenabled()
    assert len(poller.matcher.ids()) == 1
