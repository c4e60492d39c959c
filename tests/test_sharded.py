"""The engine split over worker processes matches exactly as the one-process engine, through
adds, changes and removals; fails loudly, not wrongly, when a worker dies."""

import dataclasses
from datetime import datetime, timezone

import pytest

from bot.errors import QueryError
from bot.matching import IndexedMatcher, compile_query
from bot.models import ChannelRef, Subscription
from bot.sharded import ShardedMatcher, ShardFailed

from .fakes import paper

ML = ChannelRef("console", "ml")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def made():
    from bench.workloads import make_workload

    return make_workload("real", subscriptions=2500, papers=90, seed=5, history=150)


def test_the_sharded_engine_matches_as_the_one_process_engine(made):
    subs = made.subscriptions()
    forms = {s.query: compile_query(s.query) for s in subs[::2]}
    # Half carry their stored compiled form, half none (parsed in this process, and given back).
    given = [dataclasses.replace(s, compiled=forms.get(s.query)) if i % 2 == 0 else s for i, s in enumerate(subs)]
    one = IndexedMatcher(subs, papers=made.history)
    sharded = ShardedMatcher(given, papers=made.history, processes=2)
    try:
        assert len(sharded) == len(one) and sharded.ids() == one.ids()
        assert set(sharded.take_recompiled()) == {s.id for i, s in enumerate(subs) if i % 2}
        expected = [one.match(p) for p in made.papers]
        assert sum(map(len, expected)) > 0
        assert sharded.match_many(made.papers) == expected
        assert [sharded.match(p) for p in made.papers[:5]] == expected[:5]
        # Changes reach the worker holding each query (and a changed query may move to the other).
        top = max(expected, key=len)
        gone = {m.subscription_id for m in top[:3]}
        changed = top[3].subscription_id
        for engine in (one, sharded):
            for sub_id in gone:
                engine.remove(sub_id)
            engine.add(Subscription(changed, ChannelRef("slack", "C9"), "model", "u", subs[0].created_at))
            engine.add(Subscription(10**6, ChannelRef("slack", "C9"), '"language model"', "u", subs[0].created_at))
        # Both were given without a compiled form: parsed here, for storage to keep.
        assert set(sharded.take_recompiled()) == {changed, 10**6}
        again = [one.match(p) for p in made.papers]
        assert again != expected
        assert sharded.match_many(made.papers) == again
    finally:
        sharded.close()


def test_an_unparsable_query_is_refused_by_add_in_the_callers_process():
    sharded = ShardedMatcher(processes=1)
    try:
        with pytest.raises(QueryError):
            sharded.add(Subscription(1, ML, "-video", "u", T0))
        assert sharded.ids() == set()
        sharded.add(Subscription(2, ML, "diffusion", "u", T0))
        got = sharded.match(paper("2411.00001", "Diffusion models"))
        assert [(m.subscription_id, m.channel, m.terms) for m in got] == [(2, ML, ("diffusion in title",))]
    finally:
        sharded.close()


def test_a_dead_worker_makes_matching_fail_not_miss(made):
    subs = made.subscriptions()[:300]
    sharded = ShardedMatcher(subs, papers=made.history, processes=2)
    try:
        assert sharded.match_many(made.papers[:3]) == [IndexedMatcher(subs, papers=made.history).match(p)
                                                        for p in made.papers[:3]]
        sharded._procs[1].kill()
        sharded._procs[1].wait()
        with pytest.raises(ShardFailed):
            sharded.match_many(made.papers[:30])
        with pytest.raises(ShardFailed):  # and from then on
            sharded.match(made.papers[0])
    finally:
        sharded.close()
    assert sharded._procs == []  # closed: the live worker was told to stop, the dead one reaped


# ---- in the poller (`[matching] processes`) ---------------------------------------------------

async def test_a_poller_with_worker_processes_queues_what_one_without_does(tmp_path, clock):
    from bot.poller import Poller
    from storage import Store

    from .fakes import FakeSource, due_now

    store = Store(tmp_path / "db.sqlite")
    store.add_subscription(ML, "diffusion", "u1", clock())
    store.add_subscription(ChannelRef("console", "cv"), '"video generation" OR segm*', "u1", clock())
    poller = Poller(store, clock, match_processes=2)
    try:
        clock.advance(minutes=1)
        source = FakeSource(papers=[paper("2410.00001", "Latent Diffusion"), paper("2410.00002", "Agents"),
                                    paper("2410.00003", "Segment anything in video generation")])
        report = await poller.poll(source)
        assert isinstance(poller.matcher, ShardedMatcher)
        assert (report.ok, report.queued) == (True, 2)
        assert sorted((d.paper_id, d.channel.key) for d in due_now(store, clock())) == [
            ("2410.00001", "console:ml"), ("2410.00003", "console:cv")]
        # A worker dies: that poll fails (its papers stay written down), the next loads the
        # index again and queues them; none is settled unposted.
        poller.matcher._procs[0].kill()
        poller.matcher._procs[0].wait()
        source.papers = [paper("2410.00004", "Diffusion policies"), paper("2410.00005", "Video segmentation")]
        failed = await poller.poll(source)
        assert not failed.ok and "matching worker process failed" in failed.error
        again = await poller.poll(source)
        assert again.ok and again.queued == 2
        assert {d.paper_id for d in due_now(store, clock())} >= {"2410.00004", "2410.00005"}
    finally:
        poller.close()
        store.close()
