"""The engine split over worker processes matches exactly as the one-process engine, through
adds, changes and removals; fails loudly, not wrongly, when a worker dies."""

import dataclasses
import re
import threading
from datetime import datetime, timezone

import pytest

from bot.errors import QueryError
from bot.matching import IndexedMatcher, compile_query
from bot.models import ChannelRef, Subscription
from bot.sharded import PaperFailed, ShardedMatcher, ShardFailed, _ShardTable

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


def test_a_closed_engine_fails_every_call_rather_than_answering_no_matches():
    sharded = ShardedMatcher([Subscription(1, ML, "diffusion", "u", T0)], processes=1)
    found = paper("2411.00001", "Diffusion models")
    assert [m.subscription_id for m in sharded.match(found)] == [1]
    sharded.close()
    assert sharded.failed == "the matching engine was closed"
    for call in (lambda: sharded.match(found), lambda: sharded.match_many([found] * 3),
                 lambda: sharded.result(sharded.submit([found]))):
        with pytest.raises(ShardFailed, match="closed"):
            call()


def test_a_worker_that_answers_nothing_fails_the_call_and_is_ended(made, monkeypatch):
    # A stopped (hung) worker: the caller would wait for its answer for ever; after
    # ANSWER_TIMEOUT the call fails as for a dead worker, and the workers are ended.
    import signal

    import bot.sharded

    subs = made.subscriptions()[:300]
    sharded = ShardedMatcher(subs, papers=made.history, processes=2)
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            sharded.match_many(made.papers[:30])
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    try:
        assert sharded.match(made.papers[0]) == IndexedMatcher(subs, papers=made.history).match(made.papers[0])
        monkeypatch.setattr(bot.sharded, "ANSWER_TIMEOUT", 0.5)
        sharded._procs[0].send_signal(signal.SIGSTOP)
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(60)  # a guard against the hang this test is about, not a timing
        assert not caller.is_alive(), "the call still waits for the stopped worker"
        assert isinstance(outcome[0], ShardFailed) and "answered nothing in 0.5 s" in str(outcome[0])
        assert sharded.failed and sharded._procs[0].wait(30) is not None  # ended (killed while stopped)
        with pytest.raises(ShardFailed):  # and from then on
            sharded.match(made.papers[0])
    finally:
        sharded.close()
    assert sharded._procs == []


def test_a_paper_that_fails_in_a_worker_fails_that_call_not_the_engine(made):
    subs = made.subscriptions()[:300]
    one = IndexedMatcher(subs, papers=made.history)
    sharded = ShardedMatcher(subs, papers=made.history, processes=2)
    try:
        broken = dataclasses.replace(made.papers[5], summary=None)  # raises in both workers' PaperView
        papers = made.papers[:30]
        with pytest.raises(PaperFailed, match=rf"for 1 paper\(s\): {re.escape(broken.id)}: AttributeError"):
            sharded.match_many([*papers[:12], broken, *papers[12:]])
        # Every answer was read: the next calls get their own papers' matches.
        assert sharded.match_many(papers) == [one.match(p) for p in papers]
        assert sharded.match(papers[7]) == one.match(papers[7])
        assert sharded.failed is None
    finally:
        sharded.close()


def test_a_worker_failing_while_answers_wait_ends_the_engine_and_the_call(monkeypatch):
    # Many big answers unread when a worker fails: the worker holding them blocks writing,
    # and the sender thread writing to it; the call must end (ShardFailed), not hang.
    sharded = ShardedMatcher([Subscription(i, ML, "model", "u", T0) for i in range(1, 3001)], processes=2)
    monkeypatch.setattr("bot.sharded.PAPERS_PER_MESSAGE", 1)
    papers = [paper(f"2411.{i:05d}", "A model", "model " * 400) for i in range(300)]
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            sharded.match_many([papers[0], None, *papers[1:]])  # type: ignore[list-item]  # fails in the workers
        except BaseException as exc:
            outcome.append(exc)

    try:
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(120)  # a guard against a hang, not a speed test
        assert not caller.is_alive() and isinstance(outcome[0], ShardFailed)
        with pytest.raises(ShardFailed):
            sharded.match(papers[0])
    finally:
        sharded.close()
    assert sharded._procs == []


def test_matches_carry_their_subscriptions_channels_through_changes():
    cv, ml2 = ChannelRef("console", "cv"), ChannelRef("slack", "C2")
    subs = [Subscription(1, ML, "diffusion", "u", T0), Subscription(2, cv, "diffusion", "u", T0),
            Subscription(3, ml2, "video", "u", T0), Subscription(4, ML, "video", "u", T0)]
    one, sharded = IndexedMatcher(subs), ShardedMatcher(subs, processes=2)
    try:
        found = paper("2411.00001", "Video diffusion")
        assert sharded.match(found) == one.match(found)
        assert [m.channel for m in sharded.match(found)] == [ML, cv, ml2, ML]
        for engine in (one, sharded):  # moved to another channel, and one gone
            engine.add(Subscription(1, ml2, "diffusion", "u", T0))
            engine.remove(4)
        assert sharded.match(found) == one.match(found)
        assert [(m.subscription_id, m.channel) for m in sharded.match(found)] == [(1, ml2), (2, cv), (3, ml2)]
    finally:
        sharded.close()


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


async def test_a_poller_with_worker_processes_matches_a_batch_at_once_and_finds_a_failing_paper(tmp_path, clock,
                                                                                              caplog):
    from bot.poller import Poller
    from storage import Store

    from .fakes import FakeSource, due_now

    store = Store(tmp_path / "db.sqlite")
    store.add_subscription(ML, "diffusion", "u1", clock())
    poller = Poller(store, clock, match_processes=2)
    try:
        poller.sync_subscriptions()
        matcher = poller.matcher
        assert isinstance(matcher, ShardedMatcher)
        batches: list[list[str]] = []
        one_by_one: list[str] = []
        real_submit, real_result = matcher.submit, matcher.result

        def submit(papers):
            batches.append([p.id for p in papers])
            return real_submit(papers)

        def result(call):
            found = real_result(call)
            if any(p.id == "2410.00002" for p in call.papers):
                raise PaperFailed(["2410.00002: AttributeError: a bug"])
            return found

        def match(p):
            one_by_one.append(p.id)
            if p.id == "2410.00002":
                raise PaperFailed(["2410.00002: AttributeError: a bug"])
            return real_result(real_submit([p]))[0]

        matcher.submit, matcher.result, matcher.match = submit, result, match  # type: ignore[method-assign]
        clock.advance(minutes=1)
        papers = [paper(f"2410.0000{i}", f"Diffusion {i}") for i in range(1, 5)]
        source = FakeSource(papers=papers)
        # The batch fails: its papers are matched one by one, the failing one fails the poll
        # the first time (as with one process); they all stay written down.
        assert not (await poller.poll(source)).ok
        assert batches == [[p.id for p in papers]] and one_by_one[:2] == ["2410.00001", "2410.00002"]
        # The next poll: the one it fails on again is stored and not posted; the others are queued.
        batches.clear()
        report = await poller.poll(source)
        assert report.ok and report.queued == 3
        assert "2410.00002: matching failed again" in caplog.text
        assert sorted(d.paper_id for d in due_now(store, clock())) == ["2410.00001", "2410.00003", "2410.00004"]
        assert not store.unmatched_papers(10)
        # Without a failure, one call a batch and none paper by paper.
        batches.clear()
        one_by_one.clear()
        source.papers = [paper("2410.00005", "Diffusion 5"), paper("2410.00006", "Agents")]
        report = await poller.poll(source)
        assert report.ok and report.queued == 1
        assert batches == [["2410.00005", "2410.00006"]] and one_by_one == []
    finally:
        poller.close()
        store.close()


def test_the_table_of_each_subscriptions_worker_holds_what_a_dict_would():
    # Dense ids in a byte array, far-out and negative ones in a dict: the same answers as a
    # dict through adds, removals, growth, and ids that were far out before the array grew.
    import random

    rng = random.Random(7)
    table: _ShardTable = _ShardTable()
    model: dict[int, int] = {}
    for step in range(20_000):
        sub_id = rng.choice([rng.randrange(5000), rng.randrange(200_000), -rng.randrange(1, 50),
                             rng.randrange(10**12), step])
        if rng.random() < 0.3:
            assert table.pop(sub_id) == model.pop(sub_id, None)
        else:
            shard = rng.randrange(3)
            assert table.put(sub_id, shard) == model.get(sub_id)  # the shard it was held on
            model[sub_id] = shard
        assert len(table) == len(model)
    assert table.ids() == set(model)
    assert all(table.pop(sub_id) == shard for sub_id, shard in model.items())
    assert len(table) == 0 and table.ids() == set()
    assert len(table._dense) <= 2 * (16 * 20_000 + 65536)  # grown by at most 16 bytes a subscription held, doubled


def test_match_many_sends_its_papers_in_parts_ahead_and_names_every_failing_paper(made, monkeypatch):
    # Parts of 4 papers, 2 ahead: the Matches of one part are made while the workers match the
    # next ones. A paper failing in two parts: both named, every other paper's answer read.
    monkeypatch.setattr("bot.sharded.MANY_PART", 4)
    subs = made.subscriptions()[:400]
    one = IndexedMatcher(subs, papers=made.history)
    sharded = ShardedMatcher(subs, papers=made.history, processes=2)
    events: list[str] = []
    real_submit, real_result = sharded.submit, sharded.result
    sharded.submit = lambda papers: (events.append("sent"), real_submit(papers))[1]  # type: ignore[method-assign]
    sharded.result = lambda call: (events.append("taken"), real_result(call))[1]  # type: ignore[method-assign]
    try:
        papers = made.papers[:30]
        assert sharded.match_many(papers) == [one.match(p) for p in papers]
        assert events[:5] == ["sent", "sent", "sent", "taken", "sent"] and events.count("sent") == 8
        broken = [dataclasses.replace(papers[i], summary=None) for i in (1, 21)]  # raise in both workers
        with pytest.raises(PaperFailed, match=r"for 2 paper\(s\)") as failed:
            sharded.match_many([papers[0], broken[0], *papers[2:21], broken[1], *papers[22:]])
        assert {reason.partition(": ")[0] for reason in failed.value.failed} == {p.id for p in broken}
        assert sharded.match_many(papers[:9]) == [one.match(p) for p in papers[:9]]  # in step
    finally:
        sharded.close()


def test_calls_sent_far_ahead_with_changes_between_are_answered_each_at_its_version(made):
    # Many calls sent and none taken, changes sent between them (megabytes: more than a
    # socket's buffer holds): nothing blocks, and each call's matches are those of the index
    # as it was when it was sent, whichever call is taken first.
    subs = made.subscriptions()
    first, rest = subs[:1200], subs[1200:]
    sharded = ShardedMatcher(first, papers=made.history, processes=2)
    one = IndexedMatcher(first, papers=made.history)
    calls, expected = [], []
    done = threading.Event()

    def run() -> None:
        for round_ in range(40):
            papers = made.papers[(round_ * 7) % 60:(round_ * 7) % 60 + 30]
            calls.append(sharded.submit(papers))
            expected.append([one.match(p) for p in papers])
            for sub in rest[round_ * 30:(round_ + 1) * 30]:
                sharded.add(sub)
                one.add(sub)
            for sub in first[round_ * 10:(round_ + 1) * 10]:
                sharded.remove(sub.id)
                one.remove(sub.id)
        for i in (5, 0, 39, 17):  # out of order: the earlier ones read and kept
            assert sharded.result(calls[i]) == expected[i]
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        worker.join(120)
        assert done.is_set()
        assert sharded.match_many(made.papers[:20]) == [one.match(p) for p in made.papers[:20]]
    finally:
        sharded.close()


def test_a_worker_failing_on_a_change_fails_every_later_call_even_after_a_call_never_taken(made):
    # A change a worker cannot apply (a damaged stored form that still reads) is answered by
    # no call: the worker's failure must not take the place of a call's answer in the stream.
    # The call sent behind it is never taken (a poll failed with it in flight); the next call
    # must fail, not be given that call's matches as its own.
    import marshal

    from bot.matching import COMPILED_VERSION

    subs = made.subscriptions()[:300]
    sharded = ShardedMatcher(subs, papers=made.history, processes=1)
    try:
        sharded.add(Subscription(100_000, ML, "diffusion model", "u", T0, 0, COMPILED_VERSION + marshal.dumps(42)))
        sharded.submit(made.papers[:10])  # sent after the change; its result never taken
        with pytest.raises(ShardFailed):
            sharded.match_many(made.papers[10:20])
        with pytest.raises(ShardFailed):
            sharded.match(made.papers[0])
    finally:
        sharded.close()


def test_close_gives_all_workers_one_deadline_then_kills_what_remains(monkeypatch):
    # Stopped workers (SIGSTOP) never read the stop: close kills them, after CLOSE_TIMEOUT in
    # all, not that much again for each worker in turn.
    import signal

    monkeypatch.setattr("bot.sharded.CLOSE_TIMEOUT", 0.5)
    sharded = ShardedMatcher([Subscription(1, ML, "diffusion", "u", T0)], processes=3)
    assert [m.subscription_id for m in sharded.match(paper("2411.00001", "Diffusion"))] == [1]
    procs = list(sharded._procs)
    waited: list[float | None] = []
    for proc in procs:
        real_wait = proc.wait

        def wait(timeout=None, real_wait=real_wait):
            waited.append(timeout)
            return real_wait(timeout)

        proc.wait = wait  # type: ignore[method-assign]
        proc.send_signal(signal.SIGSTOP)
    sharded.close()
    assert [proc.returncode for proc in procs] == [-signal.SIGKILL] * 3
    given = [timeout for timeout in waited if timeout is not None]
    assert len(given) == 3 and given[0] <= 0.5 and sum(given) <= 0.5  # one deadline shared
    assert sharded._procs == [] and sharded.failed == "the matching engine was closed"


def test_a_workers_big_anonymous_mappings_are_found_in_its_maps():
    from bot.sharded import _anonymous_regions

    maps = """\
55aa6e8d0000-55aa6e8e0000 rw-p 00000000 00:00 0
55aa74541000-55aa74d84000 rw-p 00000000 00:00 0                          [heap]
7f50e0000000-7f50e4000000 rw-p 00000000 00:00 0
7f50e89e0000-7f50e89e3000 rw-p 00000000 00:00 0
7f50e8a00000-7f50ea000000 rw-p 00000000 00:00 0                          [stack]
7f50ea000000-7f50ec000000 rw-p 00200000 08:01 1234                       /usr/lib/libx.so
7f50ec000000-7f50ee000000 r--p 00000000 00:00 0
7f50ee000000-7f50ee200000 rw-p 00000000 00:00 0
""".splitlines()
    assert _anonymous_regions(maps) == [(0x55aa74541000, 0x843000), (0x7f50e0000000, 64 << 20),
                                        (0x7f50ee000000, 2 << 20)]
    assert _anonymous_regions()  # this process's own: a Python process has a heap of 2 MB or more


def test_a_workers_memory_is_put_in_huge_pages_after_a_load_once_and_never_fails_it(monkeypatch, caplog):
    import bot.sharded
    from bot.sharded import _MADV_COLLAPSE, _MADV_HUGEPAGE, _HugePages

    rss = [10.0]
    regions = [(0x1000000, 8 << 20), (0x4000000, 2 << 20)]
    monkeypatch.setattr(bot.sharded, "HUGE_PAGES_FROM_MB", 64)  # the figures below are around it
    monkeypatch.setattr(bot.sharded, "_rss_mb", lambda: rss[0])
    monkeypatch.setattr(bot.sharded, "_anonymous_regions", lambda: regions)
    calls: list[tuple[int, int, int]] = []
    answer = [0]

    def madvise(start: int, size: int, advice: int) -> int:
        calls.append((start, size, advice))
        return answer[0]

    huge = _HugePages()
    huge.madvise = madvise
    huge.settle()  # no change applied: nothing looked at
    huge.pending = True
    huge.settle()  # too small
    assert calls == []
    rss[0] = 100.0
    huge.settle()  # no change since the last look
    assert calls == []
    huge.pending = True
    huge.settle()
    assert calls == [(start, size, advice) for start, size in regions for advice in (_MADV_HUGEPAGE, _MADV_COLLAPSE)]
    calls.clear()
    rss[0] = 110.0  # grown by less than the step: left as it is
    huge.pending = True
    huge.settle()
    assert calls == []
    rss[0] = 130.0
    answer[0] = -1  # the kernel will not (THP off): never asked again
    huge.pending = True
    huge.settle()
    assert calls == [(regions[0][0], regions[0][1], _MADV_HUGEPAGE)] and huge.madvise is None
    rss[0] = 500.0
    huge.pending = True
    huge.settle()
    assert len(calls) == 1
    # Anything raising is logged and turns it off: the worker goes on matching.
    broken = _HugePages()
    broken.madvise = madvise
    monkeypatch.setattr(bot.sharded, "_rss_mb", lambda: 1 / 0)
    broken.pending = True
    broken.settle()
    assert broken.madvise is None and "huge pages left off" in caplog.text
