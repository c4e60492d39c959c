"""`[matching] worker_process`: the whole index held by one worker process, the poll
pipelined with it (a batch is matched there while the poller stores the next papers and
gathers the batch before). The same deliveries as matching in the poller's thread, in the
same order; a worker killed mid-poll, a paper that raises, subscriptions changed while a
batch is being matched, and closing all keep the poller's guarantees."""

from __future__ import annotations

import dataclasses

import pytest

from bot.models import ChannelRef, Paper
from bot.poller import Poller
from bot.sharded import PaperFailed, ShardedMatcher
from storage import Store, reopen

from .fakes import FakeSource, due_now, paper
from .test_poller_batches import listing as diffusion_listing  # every 2nd on diffusion, every 3rd segmentation

ML = ChannelRef("console", "ml")
CV = ChannelRef("console", "cv")
NEW = ChannelRef("console", "new")


@pytest.fixture(scope="module")
def made():
    from bench.workloads import make_workload

    return make_workload("real", subscriptions=1200, papers=150, seed=3, history=100)


def fill(store, made, clock) -> None:
    for sub in made.subscriptions():
        store.add_subscription(sub.channel, sub.query, "u", clock())


def listing(made) -> list[Paper]:
    """The workload's papers, and one of them listed again in the next batch with more upvotes:
    its first listing's deliveries are written first (still gathered, or still being matched),
    then it is matched again."""
    again = dataclasses.replace(made.papers[3], upvotes=(made.papers[3].upvotes or 0) + 40)
    return [*made.papers[:12], again, *made.papers[12:]]


def outbox(store: Store) -> list[tuple]:
    """Every row of the outbox, in the order the poll queued them."""
    return [tuple(row) for row in store.db.execute("SELECT * FROM deliveries ORDER BY id")]


def pipelined(poller: Poller) -> Poller:
    poller.BATCH = 9
    poller.GROUP_ROWS = 40
    poller.ENQUEUE_ROWS = 15
    poller.MATCH_AHEAD = 2
    return poller


def trace(matcher: ShardedMatcher, events: list[tuple[str, int]]) -> None:
    """Record each call sent and each result taken, numbered by call."""
    real_submit, real_result = matcher.submit, matcher.result
    numbers: dict[int, int] = {}

    def submit(papers):
        call = real_submit(papers)
        numbers[id(call)] = len(numbers)
        events.append(("sent", numbers[id(call)]))
        return call

    def result(call):
        events.append(("taken", numbers[id(call)]))
        return real_result(call)

    matcher.submit, matcher.result = submit, result  # type: ignore[method-assign]


async def polled_in_thread(tmp_path, clock, made, papers: list[Paper]) -> Store:
    """The reference: a store given the workload's subscriptions, then polled with `papers`
    by a poller matching in its own thread."""
    one = Store(tmp_path / "one.db")
    fill(one, made, clock)
    clock.advance(minutes=1)
    in_thread = pipelined(Poller(one, clock))
    assert (await in_thread.poll(FakeSource(papers=papers))).ok
    assert not isinstance(in_thread.matcher, ShardedMatcher)
    return one


def worker_poller(tmp_path, clock, made) -> tuple[Store, Poller]:
    """Another store given the same subscriptions at the same time as `polled_in_thread`'s,
    and a poller of it with its index in a worker process."""
    store = Store(tmp_path / "worker.db")
    clock.advance(minutes=-1)
    fill(store, made, clock)
    clock.advance(minutes=1)
    return store, pipelined(Poller(store, clock, match_worker=True))


async def test_a_poll_matched_in_a_worker_process_queues_exactly_what_one_in_the_poller_thread_does(
        tmp_path, clock, made):
    one = await polled_in_thread(tmp_path, clock, made, listing(made))
    expected = outbox(one)
    assert len(expected) > 150

    store, poller = worker_poller(tmp_path, clock, made)
    try:
        poller.sync_subscriptions()
        matcher = poller.matcher
        assert isinstance(matcher, ShardedMatcher) and len(matcher._procs) == 1
        events: list[tuple[str, int]] = []
        trace(matcher, events)
        report = await poller.poll(FakeSource(papers=listing(made)))
        assert report.ok and report.queued == len(expected)
        # Same rows (paper, channel, the reason with its subscriptions and terms, times), same order.
        assert outbox(store) == expected
        assert not store.unmatched_papers(1000)
        # Pipelined: batches were sent before the one before them was taken.
        sent_ahead = [n for n in range(1, 10) if events.index(("sent", n)) < events.index(("taken", n - 1))]
        assert len(sent_ahead) >= 5
        assert poller.matcher is matcher and matcher.failed is None
    finally:
        poller.close()
        store.close()
        one.close()


@pytest.mark.backends
async def test_a_poller_with_its_index_in_a_worker_process_queues_what_the_engine_finds(store, clock, made):
    from bot.matching import IndexedMatcher

    subs = made.subscriptions()[:600]
    for sub in subs:
        store.add_subscription(sub.channel, sub.query, "u", clock())
    clock.advance(minutes=1)
    papers = made.papers[:100]
    poller = pipelined(Poller(store, clock, match_worker=True))
    try:
        report = await poller.poll(FakeSource(papers=papers))
        assert report.ok and isinstance(poller.matcher, ShardedMatcher)
        engine = IndexedMatcher(store.subscriptions_changed_since(0).subscriptions)
        wanted = {(p.id, m.channel.key) for p in papers for m in engine.match(p)}
        assert len(wanted) > 20
        got = [(d.paper_id, d.channel.key) for d in due_now(store, clock())]
        assert len(got) == len(set(got)) and set(got) == wanted
    finally:
        poller.close()


@pytest.mark.parametrize("setting", [True, "auto"])
async def test_a_worker_process_killed_mid_poll_loses_nothing_and_doubles_nothing(tmp_path, clock, made, monkeypatch,
                                                                                  setting):
    import bot.poller

    one = await polled_in_thread(tmp_path, clock, made, made.papers)
    expected = sorted(row[1:4] for row in outbox(one))

    store, poller = worker_poller(tmp_path, clock, made)
    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", 1)
    monkeypatch.setattr(bot.poller, "_cores", lambda: 2)
    poller.match_worker = setting
    try:
        poller.sync_subscriptions()
        first = poller.matcher
        assert isinstance(first, ShardedMatcher)
        real_submit = first.submit
        sent = 0

        def submit_then_die(papers):
            nonlocal sent
            call = real_submit(papers)
            sent += 1
            if sent == 10:  # batches in flight, some gathered and queued
                first._procs[0].kill()
                first._procs[0].wait()
            return call

        first.submit = submit_then_die  # type: ignore[method-assign]
        failed = await poller.poll(FakeSource(papers=made.papers))
        assert not failed.ok and "matching worker process failed" in failed.error
        partly = outbox(store)
        assert 0 < len(partly) < len(expected) and store.unmatched_papers(1000)
        # The next poll loads the index in a new worker ("auto": in this process, from then
        # on, where a worker that cannot live would fail every poll) and queues the rest, nothing twice.
        again = await poller.poll(FakeSource(papers=made.papers))
        assert again.ok and again.queued == len(expected) - len(partly)
        assert poller.matcher is not first and first._procs == []  # the dead one's engine closed
        assert isinstance(poller.matcher, ShardedMatcher) is (setting is True)
        assert sorted(row[1:4] for row in outbox(store)) == expected and outbox(store)[:len(partly)] == partly
        assert not store.unmatched_papers(1000)
    finally:
        poller.close()
        store.close()
        one.close()


async def test_a_paper_that_fails_with_batches_in_flight_is_found_and_the_others_are_queued(tmp_path, clock, made):
    one = await polled_in_thread(tmp_path, clock, made, made.papers)
    broken = made.papers[40].id
    expected = [row[1:4] for row in outbox(one) if row[1] != broken]

    store, poller = worker_poller(tmp_path, clock, made)
    try:
        poller.sync_subscriptions()
        matcher = poller.matcher
        assert isinstance(matcher, ShardedMatcher)
        real_submit, real_result = matcher.submit, matcher.result
        one_by_one: list[str] = []

        def result(call):
            found = real_result(call)  # read in full: the later calls' answers stay in step
            if any(p.id == broken for p in call.papers):
                raise PaperFailed([f"{broken}: AttributeError: a bug"])
            return found

        def match(p):  # sent behind the batches in flight, answered after theirs
            one_by_one.append(p.id)
            if p.id == broken:
                raise PaperFailed([f"{broken}: AttributeError: a bug"])
            return real_result(real_submit([p]))[0]

        matcher.result, matcher.match = result, match  # type: ignore[method-assign]
        assert not (await poller.poll(FakeSource(papers=made.papers))).ok
        assert broken in one_by_one
        report = await poller.poll(FakeSource(papers=made.papers))
        assert report.ok
        assert sorted(row[1:4] for row in outbox(store)) == sorted(expected)  # every other paper, once
        assert not store.unmatched_papers(1000)
        assert poller.matcher is matcher and matcher.failed is None and matcher._procs[0].poll() is None
    finally:
        poller.close()
        store.close()
        one.close()


async def test_subscriptions_changed_while_a_batch_is_in_flight_are_applied_from_the_version_they_make(
        tmp_path, clock):
    # While batch 1 is matched in the worker with CV's subscription in the index, CV's is
    # removed and NEW's added. Batch 1's matches are handed over at the version it was sent
    # at, no longer the newest: checked against the subscriptions, CV gets none of it. NEW
    # gets the papers stored after it was made (batches 2 on), not those stored before.
    store = Store(tmp_path / "db.sqlite")
    store.add_subscription(ML, "diffusion", "u1", clock())
    cv = store.add_subscription(CV, "segmentation", "u2", clock()).subscription
    assert cv is not None
    poller = Poller(store, clock, match_worker=True)
    poller.BATCH = 7
    poller.GROUP_ROWS = poller.ENQUEUE_ROWS = 4
    poller.sync_subscriptions()
    matcher = poller.matcher
    assert isinstance(matcher, ShardedMatcher)
    real_submit = matcher.submit
    sent: list[list[str]] = []

    def submit_then_change(papers):
        call = real_submit(papers)
        sent.append([p.id for p in papers])
        if len(sent) == 1:  # another process, while this batch is being matched
            other = reopen(store)
            try:
                assert other.remove_subscription(CV, cv.id) is not None
                other.add_subscription(NEW, "diffusion", "u3", clock())
            finally:
                other.close()
        return call

    matcher.submit = submit_then_change  # type: ignore[method-assign]
    papers = diffusion_listing(63)
    try:
        clock.advance(minutes=1)
        report = await poller.poll(FakeSource(papers=papers))
        assert report.ok and len(sent) == 9
        got = [(d.paper_id, d.channel) for d in due_now(store, clock())]
        assert len(got) == len(set(got))
        first = set(sent[0])
        assert {p for p, channel in got if channel == ML} == {p.id for p in papers if "diffusion" in p.title}
        assert {p for p, channel in got if channel == CV} == set()
        assert {p for p, channel in got if channel == NEW} == {
            p.id for p in papers if "diffusion" in p.title and p.id not in first}
    finally:
        poller.close()
        store.close()


async def test_closing_the_poller_mid_poll_ends_its_worker_process_and_the_next_poll_finishes(tmp_path, clock):
    store = Store(tmp_path / "db.sqlite")
    store.add_subscription(ML, "diffusion", "u1", clock())
    store.add_subscription(CV, "segmentation", "u2", clock())
    papers = diffusion_listing(63)
    poller = Poller(store, clock, match_worker=True)
    poller.BATCH = 7
    poller.GROUP_ROWS = poller.ENQUEUE_ROWS = 4
    poller.between_batches = poller.close  # the bot stops while batches are being matched
    poller.sync_subscriptions()
    matcher = poller.matcher
    assert isinstance(matcher, ShardedMatcher)
    procs = list(matcher._procs)
    assert len(procs) == 1 and procs[0].poll() is None
    clock.advance(minutes=1)
    report = await poller.poll(FakeSource(papers=papers))
    assert not report.ok and "stopping" in report.error
    poller._executor.shutdown(wait=True)  # the poller's thread closes the engine after the poll
    assert matcher._procs == [] and all(proc.poll() is not None for proc in procs)
    assert not matcher._inbox._thread.is_alive()
    partly = [(d.paper_id, d.channel) for d in due_now(store, clock())]
    wanted = {(p.id, ML) for p in papers if "diffusion" in p.title} | {
        (p.id, CV) for p in papers if "segmentation" in p.title}
    assert len(partly) < len(wanted)
    again = Poller(store, clock, match_worker=True)
    try:
        assert (await again.poll(FakeSource(papers=papers))).ok
        got = [(d.paper_id, d.channel) for d in due_now(store, clock())]
        assert len(got) == len(set(got)) and set(got) == wanted
    finally:
        again.close()
        again._executor.shutdown(wait=True)
        assert isinstance(again.matcher, ShardedMatcher) and again.matcher._procs == []
        store.close()


async def test_a_batch_matched_one_by_one_after_a_change_merges_the_like_matches_of_its_version(tmp_path, clock):
    # Batch 1 cannot be sent (one by one when it lands); meanwhile the like: subscription is
    # removed and batch 2 syncs that. Batch 1 is then matched one by one at the version the
    # engine holds now, and handed over as made at it: its like: matches must be of that
    # version too, not those found when it was sent (the removed subscription's would be
    # inserted as they are, the version being the newest).
    from dataclasses import replace

    from bot.recommend import Recommender

    from .test_recommend import EXAMPLES, NEW_DIFFUSION, NEW_MATH, like, stock

    store = Store(tmp_path / "db.sqlite")
    stock(store, clock)
    liked = store.add_subscription(ML, like(EXAMPLES), "u1", clock()).subscription
    assert liked is not None
    store.add_subscription(CV, "diffusion", "u2", clock())
    poller = Poller(store, clock, recommender=Recommender(per_day=1), match_worker=True)
    poller.BATCH = 1
    poller.MATCH_AHEAD = 2
    poller.sync_subscriptions()
    matcher = poller.matcher
    assert isinstance(matcher, ShardedMatcher)
    real_submit, real_recommended = matcher.submit, poller._recommended
    recommended: list[dict] = []

    def submit(papers):
        if len(recommended) == 1:  # batch 1: the subscription goes, and the papers are not sent
            other = reopen(store)
            try:
                assert other.remove_subscription(ML, liked.id) is not None
            finally:
                other.close()
            raise ValueError("cannot pickle")
        return real_submit(papers)

    def recorded(todo, now):
        found = real_recommended(todo, now)
        recommended.append(found)
        return found

    matcher.submit = submit  # type: ignore[method-assign]
    poller._recommended = recorded  # type: ignore[method-assign]
    papers = [replace(p, listed_on=clock().date()) for p in [NEW_DIFFUSION[0], NEW_DIFFUSION[1], *NEW_MATH]]
    try:
        clock.advance(hours=1)
        report = await poller.poll(FakeSource(papers=papers))
        assert report.ok
        # Batch 1 was like: matched when it was sent: it would have gone to ML then.
        assert [m.subscription_id for m in recommended[0][NEW_DIFFUSION[0].id]] == [liked.id]
        due = due_now(store, clock())
        assert NEW_DIFFUSION[0].id in {d.paper_id for d in due if d.channel == CV}
        assert [d.paper_id for d in due if d.channel == ML] == []
    finally:
        poller.close()
        store.close()


async def test_closing_the_poller_while_it_loads_the_index_ends_the_worker_process_it_starts(tmp_path, clock):
    store = Store(tmp_path / "db.sqlite")
    store.add_subscription(ML, "diffusion", "u1", clock())
    poller: Poller

    def open_store():  # the bot stops as the worker thread begins the first load
        poller.close()
        return reopen(store)

    poller = Poller(store, clock, match_worker=True, open_store=open_store)
    try:
        await poller.load_index()
        poller._executor.shutdown(wait=True)  # the poller's thread closes the engine after the load
        matcher = poller.matcher
        assert isinstance(matcher, ShardedMatcher)
        assert matcher._procs == [] and not matcher._inbox._thread.is_alive()
    finally:
        poller.matcher.close()
        store.close()


@pytest.mark.parametrize("processes", [1, 2])
async def test_rows_made_at_each_batchs_version_are_the_rows_storages_sql_makes_under_churn(
        tmp_path, clock, made, processes):
    # Subscriptions are added and removed by another process while batches are in flight
    # (at most every send). Each group's rows, made at the version its batches were sent at
    # (inserted as they are while it is the newest), must be what storage's SQL makes of the
    # same matches (`takes_made_deliveries` off). The writes wait for each transaction, so
    # both polls see the changes at the same points.
    import random

    from bot.matching import IndexedMatcher

    async def run(name: str, made_rows: bool) -> list[tuple]:
        store = Store(tmp_path / f"{name}.db")
        clock.advance(minutes=-1)
        fill(store, made, clock)
        clock.advance(minutes=1)
        subs = store.subscriptions_changed_since(0).subscriptions
        engine = IndexedMatcher(subs)
        held_subs = {sub.id: sub for sub in subs}
        held = set(held_subs)
        poller = pipelined(Poller(store, clock, match_processes=processes, match_worker=True))
        poller.GROUP_ROWS = 5  # groups of a batch or less: most at one version
        if not made_rows:
            store.takes_made_deliveries = lambda: False  # type: ignore[method-assign]
        real_write = poller._write

        def write_now(job):
            done = real_write(job)
            done.exception()
            return done

        poller._write = write_now  # type: ignore[method-assign]
        poller.sync_subscriptions()
        matcher = poller.matcher
        assert isinstance(matcher, ShardedMatcher)
        real_submit = matcher.submit
        rng = random.Random(7)

        def submit(papers):
            call = real_submit(papers)
            other = reopen(store)
            try:
                for _ in range(rng.choice([0, 0, 0, 0, 1, 3])):  # often none: the version then stays the newest
                    # One that matches a paper just sent (its rows are in flight), or a new one.
                    hit = sorted({m.subscription_id for p in papers for m in engine.match(p)} & held)
                    if hit and rng.random() < 0.7:
                        sub = held_subs[hit[rng.randrange(len(hit))]]
                        held.discard(sub.id)
                        assert other.remove_subscription(sub.channel, sub.id) is not None
                    else:
                        like = subs[rng.randrange(len(subs))]
                        other.add_subscription(like.channel, like.query, "u", clock())
            finally:
                other.close()
            return call

        matcher.submit = submit  # type: ignore[method-assign]
        try:
            assert (await poller.poll(FakeSource(papers=listing(made)))).ok
            return sorted(row[1:4] for row in outbox(store))
        finally:
            poller.close()
            poller._executor.shutdown(wait=True)
            store.close()

    with_made = await run("made", True)
    assert len(with_made) > 150
    assert with_made == await run("sql", False)


def test_the_worker_process_is_used_when_the_first_subscription_comes_after_all_were_removed(tmp_path, clock):
    # A database whose subscriptions were all removed: the first load finds none (its version
    # is not 0). The first subscription made later is held by a worker process all the same.
    store = Store(tmp_path / "db.sqlite")
    gone = store.add_subscription(ML, "diffusion", "u1", clock()).subscription
    assert gone is not None and store.remove_subscription(ML, gone.id) is not None
    poller = Poller(store, clock, match_worker=True)
    try:
        poller.sync_subscriptions()
        assert len(poller.matcher) == 0
        store.add_subscription(CV, "segmentation", "u2", clock())
        poller.sync_subscriptions()
        assert isinstance(poller.matcher, ShardedMatcher) and len(poller.matcher) == 1
        assert [m.channel for m in poller.matcher.match(paper("2411.00001", "Segmentation"))] == [CV]
    finally:
        poller.matcher.close()
        store.close()


async def test_auto_holds_the_index_in_a_worker_from_its_threshold_on_more_than_one_core(tmp_path, clock, made,
                                                                                         monkeypatch):
    # `[matching] worker_process = "auto"`: decided at each first load (the first subscriptions
    # after none are one too), by the subscriptions found then and the cores this process has.
    import bot.poller

    one = await polled_in_thread(tmp_path, clock, made, made.papers[:40])
    store, _ = worker_poller(tmp_path, clock, made)
    count = len(store.subscription_ids())
    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", count)
    monkeypatch.setattr(bot.poller, "_cores", lambda: 1)
    alone = Poller(store, clock, match_worker="auto")
    try:
        alone.sync_subscriptions()
        assert not isinstance(alone.matcher, ShardedMatcher)  # one core: the worker would take turns
    finally:
        alone.close()
    monkeypatch.setattr(bot.poller, "_cores", lambda: 2)
    poller = pipelined(Poller(store, clock, match_worker="auto"))
    try:
        report = await poller.poll(FakeSource(papers=made.papers[:40]))
        assert report.ok and isinstance(poller.matcher, ShardedMatcher)
        assert outbox(store) == outbox(one)
        # Every subscription removed, then fewer than the threshold: the worker's engine is kept
        # (decided again, but an engine is moved into a worker at a first subscription, never out).
        for sub in store.subscriptions():
            store.remove_subscription(sub.channel, sub.id)
        poller.sync_subscriptions()
        assert not poller.matcher.ids()
        store.add_subscription(ML, "diffusion", "u", clock())
        poller.sync_subscriptions()
        assert isinstance(poller.matcher, ShardedMatcher)
    finally:
        poller.close()
        store.close()
        one.close()


@pytest.mark.parametrize("cpu_max, cores", [(None, 2), ("max 100000\n", 2), ("100000 100000\n", 1),
                                            ("150000 100000\n", 1.5), ("800000 100000\n", 2), ("garbled\n", 2)])
def test_the_cores_auto_counts_are_those_of_the_affinity_under_a_containers_quota(tmp_path, monkeypatch,
                                                                                   cpu_max, cores):
    import os

    from bot.poller import _cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    (tmp_path / "self").write_text("0::/\n")  # in a container: its own cgroup is the root it sees
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    assert _cores(tmp_path, tmp_path / "self") == cores


@pytest.mark.parametrize("own, files, cores", [
    # A systemd service's CPUQuota= (cgroup v2): in its own cgroup, not at the root.
    ("0::/system.slice/papers-bot.service\n", {"system.slice/papers-bot.service/cpu.max": "100000 100000"}, 1),
    # A parent's quota bounds its children's.
    ("0::/a/b\n", {"a/cpu.max": "50000 100000", "a/b/cpu.max": "max 100000"}, 0.5),
    ("0::/a/b\n", {"a/b/cpu.max": "max 100000"}, 2),
    # cgroup v1 (Docker's `--cpus` on hosts without v2): the cpu controller's quota, -1 for none.
    ("4:memory:/x\n2:cpu,cpuacct:/docker/1\n", {"cpu,cpuacct/docker/1/cpu.cfs_quota_us": "100000",
                                                 "cpu,cpuacct/docker/1/cpu.cfs_period_us": "100000"}, 1),
    ("1:cpu:/docker/1\n", {"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"}, 1.5),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 2),
])
def test_the_cores_auto_counts_are_bounded_by_the_quota_of_this_process_cgroup_and_its_parents(
        tmp_path, monkeypatch, own, files, cores):
    import os

    from bot.poller import _cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    (tmp_path / "self").write_text(own)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text + "\n")
    assert _cores(tmp_path / "fs", tmp_path / "self") == cores


def test_auto_says_in_the_log_where_it_puts_an_index_past_its_threshold(tmp_path, clock, monkeypatch, caplog):
    # A process more and no kept index file: the log says why (and, on one core, why not).
    import logging

    import bot.poller

    store = Store(tmp_path / "bot.db")
    for query in ("diffusion", "graph neural"):
        store.add_subscription(ML, query, "u", clock())
    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", 2)
    try:
        for cores, where in ((1, "in this process"), (2, "in a worker process")):
            monkeypatch.setattr(bot.poller, "_cores", lambda cores=cores: cores)
            poller = Poller(store, clock, match_worker="auto")
            caplog.clear()
            try:
                with caplog.at_level(logging.INFO, logger="bot.poller"):
                    poller.sync_subscriptions()
                assert isinstance(poller.matcher, ShardedMatcher) == (cores == 2)
                assert f'worker_process = "auto": 2 subscriptions, {cores} cores: the index is {where}' in caplog.text
            finally:
                poller.close()
    finally:
        store.close()


def test_auto_says_its_choice_once_though_like_subscriptions_alone_leave_the_index_empty(tmp_path, clock,
                                                                                          monkeypatch, caplog):
    # like: subscriptions are the recommender's, not the index's: with only those, every sync
    # finds an empty index and asks again.
    import logging

    import bot.poller

    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", 1)
    monkeypatch.setattr(bot.poller, "_cores", lambda: 1)
    store = Store(tmp_path / "bot.db")
    store.add_papers([paper("2411.00001", "Diffusion")], clock())
    store.add_subscription(ML, "like:2411.00001", "u", clock())
    poller = Poller(store, clock, match_worker="auto")
    try:
        with caplog.at_level(logging.INFO, logger="bot.poller"):
            for _ in range(3):
                poller.sync_subscriptions()
        assert not poller.matcher.ids()
        assert caplog.text.count('worker_process = "auto"') == 1
    finally:
        poller.close()
        store.close()
