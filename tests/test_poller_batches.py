"""The poll off the loop: its work runs in a worker thread, in short transactions, and a
poll interrupted between two of them (an exception, a kill) is finished by the next poll,
with nothing lost and nothing queued twice."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from bot.errors import StorageError
from bot.models import ChannelRef
from bot.poller import Poller
from storage import Store, reopen

from .fakes import FakeSource, paper

ML = ChannelRef("console", "ml")
CV = ChannelRef("console", "cv")
ROOT = Path(__file__).resolve().parent.parent


def listing(n: int = 60) -> list:
    """n papers: every even one about diffusion (ML's), every third about segmentation (CV's)."""
    papers = []
    for i in range(n):
        words = ["diffusion"] if i % 2 == 0 else []
        words += ["segmentation"] if i % 3 == 0 else []
        papers.append(paper(f"2411.{i:05d}", f"Paper {i} on {' and '.join(words) or 'agents'}"))
    return papers


def expected(papers: list) -> set[tuple[str, str]]:
    pairs = set()
    for p in papers:
        if "diffusion" in p.title:
            pairs.add((p.id, ML.key))
        if "segmentation" in p.title:
            pairs.add((p.id, CV.key))
    return pairs


def queued(store: Store) -> list[tuple[str, str]]:
    return [tuple(row) for row in store.db.execute("SELECT paper_id, channel FROM deliveries ORDER BY id")]


def subscribe(store: Store, clock) -> None:
    store.add_subscription(ML, "diffusion", "u1", clock())
    store.add_subscription(CV, "segmentation", "u2", clock())


def small_batches(poller: Poller) -> Poller:
    poller.BATCH = 7
    poller.GROUP_ROWS = poller.ENQUEUE_ROWS = 4
    return poller


async def test_commands_run_and_write_on_the_loop_between_the_batches_of_a_poll(store, clock):
    subscribe(store, clock)
    papers = listing()
    poller = small_batches(Poller(store, clock))
    loop = asyncio.get_running_loop()
    commands: list[float] = []

    async def command() -> None:  # a slash command's own write, on the loop's Store
        commands.append(store.record_command("u1", clock(), limit=10**6))

    # Called in the worker thread after each committed batch: it waits for the loop to run a
    # command, which it could not do if the poll held the loop, or the write lock.
    poller.between_batches = lambda: asyncio.run_coroutine_threadsafe(command(), loop).result(timeout=60)
    report = await poller.poll(FakeSource(papers=papers))
    assert report.ok and report.new == 60 and report.queued == len(expected(papers))
    assert len(commands) >= 60 // 7 and commands == [0.0] * len(commands)  # every one counted, none refused
    assert set(queued(store)) == expected(papers) and not store.unmatched_papers(100)


async def test_only_the_writer_s_connection_leaves_foreign_keys_unchecked(store, clock):
    # The writer thread's Store only queues the poll's deliveries, for papers stored (and
    # written down unmatched) before: its connection checks no foreign key (a lookup in
    # papers a delivery). Every other connection still does, and the poll queues all.
    subscribe(store, clock)
    papers = listing()
    poller = small_batches(Poller(store, clock))

    def checked(s: Store) -> int:
        return s.db.execute("PRAGMA foreign_keys").fetchone()[0]

    seen: list[int] = []
    poller.between_batches = lambda: seen.append(checked(poller._writer_store))  # in the writer thread
    try:
        report = await poller.poll(FakeSource(papers=papers))
        assert report.ok and set(queued(store)) == expected(papers) and not store.unmatched_papers(100)
        assert seen and set(seen) == {0}
        worker = poller.worker_store
        assert worker is not None and await asyncio.get_running_loop().run_in_executor(
            poller._executor, checked, worker) == 1
        assert checked(store) == 1
        with pytest.raises(sqlite3.IntegrityError):  # the loop's Store: a delivery of no paper
            store.db.execute("INSERT INTO deliveries (paper_id, channel, matched, next_attempt_at, created_at) "
                             "VALUES ('no-such-paper', 'console:ml', '[]', 'x', 'x')")
    finally:
        poller.close()


async def test_the_writer_s_checkpoints_run_in_a_thread_of_their_own(store, clock, monkeypatch):
    # A WAL checkpoint (every CHECKPOINT_EVERY commits of a poller's connection) copies pages
    # and syncs the file: the writer thread, the poll's bound, leaves its own to a Checkpointer
    # and goes on (the worker thread as well). They still run (the WAL stays small), and
    # closing the poller ends their threads.
    import storage.db

    monkeypatch.setattr(storage.db, "CHECKPOINT_EVERY", 2)
    subscribe(store, clock)
    papers = listing()
    poller = small_batches(Poller(store, clock))
    statements: list[str] = []

    def watch() -> None:  # in the writer thread, after each transaction
        writer = poller._writer_store
        if not statements:
            writer.db.conn.set_trace_callback(statements.append)
        statements.append("-- committed")

    poller.between_batches = watch
    report = await poller.poll(FakeSource(papers=papers))
    assert report.ok and set(queued(store)) == expected(papers)
    checkpointer = poller._writer_store.db.papers_bot_checkpointer
    commits = statements.count("-- committed")
    assert commits >= 10 and not [s for s in statements if "wal_checkpoint" in s]
    assert 1 <= checkpointer.done <= commits and checkpointer._thread.is_alive()
    theirs = poller.worker_store.db.papers_bot_checkpointer  # the worker thread's, likewise
    assert theirs is not checkpointer and theirs.done >= 1
    poller.close()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, poller._writer.shutdown)
    await loop.run_in_executor(None, poller._executor.shutdown)
    assert not checkpointer._thread.is_alive() and not theirs._thread.is_alive()


async def test_the_poll_s_first_group_is_handed_to_the_writer_sooner(store, clock):
    # The writer thread idles until it gets the poll's first group: that one is handed over
    # at FIRST_GROUP_ROWS matches, the others at GROUP_ROWS. Here: the first at 4 matches,
    # then all the rest as one group (a transaction each: ENQUEUE_ROWS covers them).
    subscribe(store, clock)
    papers = listing()
    poller = Poller(store, clock)
    poller.BATCH, poller.GROUP_ROWS, poller.FIRST_GROUP_ROWS, poller.ENQUEUE_ROWS = 7, 10**6, 4, 10**6
    counts: list[int] = []
    poller.between_batches = lambda: counts.append(len(queued(poller._writer_store)))  # in the writer thread
    try:
        report = await poller.poll(FakeSource(papers=papers))
    finally:
        poller.close()
    assert report.ok and set(queued(store)) == expected(papers) and not store.unmatched_papers(100)
    assert len(counts) == 2 and 4 <= counts[0] < 8 and counts[1] == len(expected(papers))


async def test_a_poll_that_fails_between_batches_is_finished_by_the_next_one(store, clock):
    subscribe(store, clock)
    papers = listing()
    poller = small_batches(Poller(store, clock))
    calls = 0

    def crash_at_the_third_batch() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("killed between batches")

    poller.between_batches = crash_at_the_third_batch
    source = FakeSource(papers=papers)
    report = await poller.poll(source)
    assert not report.ok and "killed between batches" in report.error
    partly = queued(store)
    assert 0 < len(partly) < len(expected(papers))
    assert not store.source_validators("fake")  # the listing's validators wait for all of it

    poller.between_batches = None
    report = await poller.poll(source)
    assert report.ok and 0 < report.new < 60 and store.count_papers() == 60  # the rest were new now
    after = queued(store)
    assert after[:len(partly)] == partly  # kept, not redone
    assert len(after) == len(set(after)) and set(after) == expected(papers)
    assert report.queued == len(expected(papers)) - len(partly)
    assert not store.unmatched_papers(100)


async def test_papers_stored_but_not_matched_when_matching_fails_are_matched_by_the_next_poll(store, clock):
    subscribe(store, clock)
    papers = listing()
    poller = small_batches(Poller(store, clock))
    poller.sync_subscriptions()
    real_match, seen = poller.matcher.match, []

    def failing_at_paper_20(p):
        seen.append(p.id)
        if len(seen) == 20:
            raise RuntimeError("matcher bug")
        return real_match(p)

    poller.matcher.match = failing_at_paper_20  # type: ignore[method-assign]
    source = FakeSource(papers=papers)
    assert not (await poller.poll(source)).ok
    left = {u.paper.id for u in store.unmatched_papers(100)}
    assert left and store.count_papers() < 60  # a batch stored and not matched; later ones not stored
    poller.matcher.match = real_match  # type: ignore[method-assign]
    report = await poller.poll(source)
    assert report.ok and set(queued(store)) == expected(papers) and len(queued(store)) == len(expected(papers))
    assert not store.unmatched_papers(100)


async def test_papers_left_unmatched_are_not_posted_once_older_than_max_age_days(store, clock):
    # [delivery] max_age_days: papers listed longer ago are stored, not posted. A poll
    # interrupted before matching, then a bot off for longer than that: the next poll
    # settles what was left without posting it.
    subscribe(store, clock)
    papers = listing(20)
    poller = small_batches(Poller(store, clock, max_age_days=7))
    poller.between_batches = lambda: (_ for _ in ()).throw(RuntimeError("killed between batches"))
    assert not (await poller.poll(FakeSource(papers=papers))).ok
    left = store.unmatched_papers(100)
    assert left
    clock.advance(days=8)
    poller.between_batches = None
    report = await poller.poll(FakeSource(papers=[]))
    assert report.ok and report.queued == 0
    assert not store.unmatched_papers(100)
    assert not {paper_id for paper_id, _ in queued(store)} & {u.paper.id for u in left}


KILLED = textwrap.dedent("""
    import asyncio, os, sys
    from datetime import datetime, timezone
    from bot.poller import Poller
    from storage import Store
    from tests.test_poller_batches import listing
    from tests.fakes import FakeSource

    async def main():
        store = Store(sys.argv[1])
        poller = Poller(store, lambda: datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc))
        poller.BATCH, poller.GROUP_ROWS, poller.ENQUEUE_ROWS = 7, 4, 4
        calls = []
        def kill():
            calls.append(1)
            if len(calls) == 4:
                os._exit(9)  # as a kill -9 would: no rollback, no cleanup
        poller.between_batches = kill
        await poller.poll(FakeSource(papers=listing()))
    asyncio.run(main())
""")


async def test_a_process_killed_in_the_middle_of_a_poll_loses_nothing(tmp_path, clock):
    path = tmp_path / "killed.db"
    store = Store(path)
    subscribe(store, clock)
    done = subprocess.run([sys.executable, "-c", KILLED, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 9, done.stderr
    partly = queued(store)
    assert 0 < len(partly) < len(expected(listing()))
    report = await Poller(store, clock).poll(FakeSource(papers=listing()))
    assert report.ok
    after = queued(store)
    assert len(after) == len(set(after)) and set(after) == expected(listing()) and after[:len(partly)] == partly
    assert not store.unmatched_papers(100)
    store.close()


async def test_closing_the_poller_stops_a_poll_between_batches_and_the_next_one_finishes_it(store, clock):
    subscribe(store, clock)
    papers = listing()
    poller = small_batches(Poller(store, clock))
    poller.between_batches = poller.close  # the bot stops while the poll goes on
    report = await poller.poll(FakeSource(papers=papers))
    assert not report.ok and "stopping" in report.error
    assert store.source_state("fake") is None or store.source_state("fake").consecutive_failures == 0
    partly = queued(store)
    assert len(partly) < len(expected(papers))
    report = await Poller(store, clock).poll(FakeSource(papers=papers))
    assert report.ok and set(queued(store)) == expected(papers) and len(queued(store)) == len(expected(papers))


async def test_a_poll_on_an_in_memory_store_stores_and_queues_in_that_store(clock):
    # An in-memory database is private to its connection: a worker's Store of its own
    # would be another, empty database, and the poll's papers would be lost there.
    store = Store(":memory:")
    try:
        store.add_subscription(ML, "diffusion", "u1", clock())
        poller = Poller(store, clock)
        report = await poller.poll(FakeSource(papers=[paper("2410.00001", "Latent Diffusion")]))
        assert (report.ok, report.new, report.queued) == (True, 1, 1)
        assert store.get_paper("2410.00001") is not None
        assert queued(store) == [("2410.00001", ML.key)]
        poller.close()
    finally:
        store.close()


async def test_a_poller_closed_while_indexing_a_backlog_for_preview_stops_and_leaves_the_rest(
        store, clock, monkeypatch):
    # After an upgrade the first poll with new papers indexes every stored paper for preview
    # (minutes at a million): closing the bot must not wait for all of it.
    from storage import paper_words

    store.add_papers([paper(f"2410.{i:05d}", f"Old paper {i} on diffusion") for i in range(40)], clock())
    monkeypatch.setattr(paper_words, "CATCH_UP_BATCH", 5)
    poller = Poller(store, clock)
    tokenized = paper_words._row

    def row_then_close(*row: object) -> tuple:  # the bot starts closing while the first batch is tokenized
        poller._stopping.set()
        return tokenized(*row)

    monkeypatch.setattr(paper_words, "_row", row_then_close)
    report = await poller.poll(FakeSource(papers=[paper("2411.00001", "New diffusion paper")]))
    assert report.ok and report.new == 1
    indexed = store.db.execute("SELECT indexed FROM paper_words_state").fetchone()[0]
    assert indexed == 5  # the batch under way, and no more
    poller.close()
    # What is left is found all the same, and indexed by the next catch-up.
    since = clock() - timedelta(days=1)
    assert store.preview_candidates("diffusion", since).count == 41
    assert store.db.execute("SELECT indexed FROM paper_words_state").fetchone()[0] == 41


async def test_a_poll_indexes_its_papers_for_preview_while_the_writer_queues_its_last_deliveries(
        store, clock, monkeypatch):
    # The worker thread indexes the new papers' words once the last group is handed to the
    # writer thread, not after the writer is done: the last transaction waits here until the
    # index has started (before, it timed out: the index began only after it).
    subscribe(store, clock)
    papers = listing(30)
    poller = small_batches(Poller(store, clock))
    total = len(expected(papers))
    index_started = threading.Event()
    index = type(store).index_paper_words

    def index_then_note(self, *args, **kwargs):
        index_started.set()
        return index(self, *args, **kwargs)

    queue, done, overlapped = poller._queue, [0], []

    def queue_then_wait(s, batch, now):
        n = queue(s, batch, now)
        done[0] += n
        if done[0] == total:  # the poll's last delivery transaction
            overlapped.append(index_started.wait(10))
        return n

    monkeypatch.setattr(type(store), "index_paper_words", index_then_note)
    poller._queue = queue_then_wait  # type: ignore[method-assign]
    report = await poller.poll(FakeSource(papers=papers))
    assert report.ok and report.new == 30 and report.queued == total
    assert overlapped == [True]
    assert store.db.execute("SELECT indexed FROM paper_words_state").fetchone()[0] == store.count_papers()
    poller.close()


async def test_a_poll_whose_preview_index_fails_still_queues_everything(store, clock, monkeypatch, caplog):
    subscribe(store, clock)
    papers = listing(30)
    poller = small_batches(Poller(store, clock))

    def full_disk(self, *args, **kwargs):
        raise StorageError("database or disk is full")

    monkeypatch.setattr(type(store), "index_paper_words", full_disk)
    report = await poller.poll(FakeSource(papers=papers))
    assert report.ok and report.new == 30 and report.queued == len(expected(papers))
    assert set(queued(store)) == expected(papers) and not store.unmatched_papers(100)
    assert any("indexing new papers for preview failed" in r.getMessage() for r in caplog.records)
    poller.close()
    # Found by preview all the same (papers not indexed yet are read unnarrowed).
    assert store.preview_candidates("diffusion", clock() - timedelta(days=1)).count == 15


async def test_a_paper_the_matcher_always_fails_on_holds_up_one_poll_not_every_source(store, clock, caplog):
    subscribe(store, clock)
    poller = small_batches(Poller(store, clock))
    poller.sync_subscriptions()
    real_match = poller.matcher.match

    def broken_on_one(p):
        if p.id == "2411.00004":
            raise RuntimeError("matcher bug")
        return real_match(p)

    poller.matcher.match = broken_on_one  # type: ignore[method-assign]
    first = listing(10)
    assert not (await poller.poll(FakeSource("huggingface", papers=first))).ok  # first failure: retried
    other = [paper(f"2411.9{i:04d}", "Paper on diffusion") for i in range(5)]
    report = await poller.poll(FakeSource("arxiv", papers=other))  # the leftover fails again: settled
    assert report.ok
    assert "2411.00004: matching failed again" in caplog.text
    assert not store.unmatched_papers(100)
    assert (await poller.poll(FakeSource("huggingface", papers=first))).ok  # the rest of its listing
    got = set(queued(store))
    assert got == expected(first + other) - {("2411.00004", ML.key), ("2411.00004", CV.key)}
    assert len(queued(store)) == len(got)  # nothing twice
    assert store.get_paper("2411.00004") is not None  # stored, not posted


async def test_a_paper_is_matched_as_the_listing_that_brought_it_shows_it(store, clock):
    # Stored from arXiv first; then Hugging Face lists it and its upvotes cross the threshold.
    # Its row says sources "arxiv,huggingface"; the match must see the Hugging Face listing.
    store.add_subscription(ML, "source:huggingface upvotes>=20", "u1", clock())
    poller = Poller(store, clock)
    clock.advance(minutes=1)
    arxiv = FakeSource("arxiv", [paper("2411.00001", "Diffusion", source="arxiv", listed_on=clock().date())])
    assert (await poller.poll(arxiv)).queued == 0
    hf = FakeSource("huggingface", [paper("2411.00001", "Diffusion", source="huggingface", upvotes=3,
                                          listed_on=clock().date())])
    assert (await poller.poll(hf)).queued == 0
    hf.papers = [paper("2411.00001", "Diffusion", source="huggingface", upvotes=25, listed_on=clock().date())]
    assert (await poller.poll(hf)).queued == 1
    assert queued(store) == [("2411.00001", ML.key)]


async def test_a_subscribe_with_backfill_during_a_poll_gets_each_paper_of_it_once(store, make_config, clock):
    # The channel subscribes (with --backfill 20) while a poll is between two of its
    # transactions. The papers the poll stored before the subscription was committed are the
    # backfill's (it reads them after); those stored after it are the poll's to queue. Before,
    # the poll matched against the subscriptions it had loaded when it began, so the papers
    # stored after the subscribe reached neither.
    import handlers

    store.add_subscription(CV, "segmentation", "u2", clock())
    papers = listing()
    poller = small_batches(Poller(store, clock))
    # The worker runs at most a transaction ahead of the writer: fewer than 20 matching papers
    # are stored before the subscribe (a backfill posts the 20 most recent at most).
    poller.WRITES_AHEAD = 1
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)
    loop = asyncio.get_running_loop()
    replies = []
    calls = 0

    def subscribe_after_the_second_transaction() -> None:  # in the poll's writer thread
        nonlocal calls
        calls += 1
        if calls == 2:
            request = handlers.request_from_text(ML, "u1", "subscribe diffusion --backfill 20", True)
            replies.append(asyncio.run_coroutine_threadsafe(handlers.handle(ctx, request), loop).result(timeout=60))

    poller.between_batches = subscribe_after_the_second_transaction
    report = await poller.poll(FakeSource(papers=papers))
    assert report.ok and report.new == 60
    (reply,) = replies
    assert reply.queued > 0 and "Backfill: posting" in reply.text  # some were stored before it
    ml = [paper_id for paper_id, channel in queued(store) if channel == ML.key]
    assert report.queued > len([1 for _, channel in queued(store) if channel == CV.key])  # and some after it
    assert len(ml) == len(set(ml)) and set(ml) == {p.id for p in papers if "diffusion" in p.title}


async def test_an_unsubscribe_during_a_poll_gets_nothing_from_the_transactions_after_it(store, clock):
    # The worker makes each transaction's deliveries at the subscription version its engine
    # holds; the writer inserts them as they are only while that version is the newest. A
    # removal gives a new version (m029), so the transactions after it read the subscriptions
    # again, and the removed one's channel gets nothing more (the engine drops it at its
    # next sync).
    subscribe(store, clock)
    (sub,) = store.subscriptions(ML)
    papers = listing()
    poller = small_batches(Poller(store, clock))
    poller.WRITES_AHEAD = 1
    loop = asyncio.get_running_loop()
    at_removal: list[int] = []
    calls = 0

    async def unsubscribe() -> None:
        assert store.remove_subscription(ML, sub.id) is not None
        at_removal.append(len([1 for _, channel in queued(store) if channel == ML.key]))

    def unsubscribe_after_the_second_transaction() -> None:  # in the poll's writer thread
        nonlocal calls
        calls += 1
        if calls == 2:
            asyncio.run_coroutine_threadsafe(unsubscribe(), loop).result(timeout=60)

    poller.between_batches = unsubscribe_after_the_second_transaction
    report = await poller.poll(FakeSource(papers=papers))
    assert report.ok and report.new == 60 and calls > 4
    ml = [paper_id for paper_id, channel in queued(store) if channel == ML.key]
    assert at_removal == [len(ml)] and 0 < len(ml) < len([p for p in papers if "diffusion" in p.title])
    cv = [paper_id for paper_id, channel in queued(store) if channel == CV.key]
    assert sorted(cv) == sorted(p.id for p in papers if "segmentation" in p.title)


async def test_a_removal_committed_while_the_engine_syncs_is_not_taken_for_the_engine_s_state(store, clock):
    # The engine's sync reads the subscriptions' ids, then what changed since its version: a
    # removal committed in between (here at the poll's first sync) leaves it holding the
    # removed subscription at the newest version. The poller then knows no version its engine
    # holds exactly, and syncs again before it matches (or the writer would read the
    # subscriptions): the removed one's channel gets nothing.
    subscribe(store, clock)
    (sub,) = store.subscriptions(ML)
    removed: list = []
    armed = threading.Event()

    def open_worker_store():
        opened = reopen(store)
        ids = opened.subscription_ids

        def ids_then_a_removal() -> set[int]:
            found = ids()
            if armed.is_set() and not removed:  # another process, between the engine's two reads
                removed.append(opened.remove_subscription(ML, sub.id))
            return found
        opened.subscription_ids = ids_then_a_removal  # type: ignore[method-assign]
        return opened

    poller = Poller(store, clock, open_store=open_worker_store)
    assert (await poller.poll(FakeSource(papers=[]))).ok  # the engine loads both
    store.add_subscription(CV, "agents", "u2", clock())  # the next poll syncs
    armed.set()
    clock.advance(minutes=1)
    report = await poller.poll(FakeSource(papers=listing()))
    assert report.ok and removed == [sub] and report.queued > 0
    assert {channel for _, channel in queued(store)} == {CV.key}


async def test_a_subscription_made_after_the_newest_one_was_removed_is_matched(store, clock):
    # A subscription's version was one more than the highest left: removing the newest one
    # and subscribing again gave the new one the removed one's version, which the poller's
    # engine had already caught up to, so it never loaded it (until a restart).
    store.add_subscription(CV, "segmentation", "u2", clock())
    removed = store.add_subscription(ML, "agents", "u1", clock()).subscription
    poller = Poller(store, clock)
    assert (await poller.poll(FakeSource(papers=[]))).ok  # the engine loads both
    assert removed is not None and store.remove_subscription(ML, removed.id)
    store.add_subscription(ML, "diffusion", "u1", clock())
    clock.advance(minutes=1)
    report = await poller.poll(FakeSource(papers=[paper("2411.00001", "Diffusion models")]))
    assert report.ok and queued(store) == [("2411.00001", ML.key)]


async def test_no_garbage_collection_runs_during_a_poll_and_it_is_back_on_after(store, clock, monkeypatch):
    # The poll makes hundreds of thousands of objects at scale (matches): a full collection
    # during it scanned them all holding the GIL, and the event loop stood still (~80 ms).
    import gc

    from storage import Store as StoreClass

    subscribe(store, clock)
    poller = small_batches(Poller(store, clock))
    poller.sync_subscriptions()
    seen: list[tuple[str, bool]] = []
    match, queue_matched = poller.matcher.match, StoreClass.queue_matched
    monkeypatch.setattr(poller.matcher, "match", lambda p: (seen.append(("match", gc.isenabled())), match(p))[1])
    thread = threading.current_thread

    def recorded(self, batch, now):
        seen.append((thread().name.split("_")[0], gc.isenabled()))
        return queue_matched(self, batch, now)

    monkeypatch.setattr(StoreClass, "queue_matched", recorded)
    report = await poller.poll(FakeSource(papers=listing()))
    assert report.ok and report.queued == len(expected(listing()))
    assert ("match", False) in seen and ("poller-writer", False) in seen  # in the worker and the writer thread
    assert {enabled for _, enabled in seen} == {False} and gc.isenabled()
    poller.between_batches = lambda: (_ for _ in ()).throw(RuntimeError("a failed poll"))
    assert not (await poller.poll(FakeSource(papers=[paper("2411.90001", "Diffusion again")]))).ok
    assert gc.isenabled()  # back on after a failed poll too


async def test_a_paper_left_by_an_interrupted_poll_and_listed_with_more_upvotes_is_matched_as_listed(store, clock):
    # A poll killed between the transactions of a group leaves its papers written down. The
    # next poll matches them first, from what was stored; when its listing then has one of
    # them with more upvotes, that paper must be matched again as listed (`upvotes>=50`), not
    # settled with the matches of its old upvotes by the group it was gathered in.
    early = ChannelRef("console", "aa")  # its transaction comes first (channel keys in order)
    store.add_subscription(early, "diffusion", "u3", clock())
    store.add_subscription(CV, "segmentation", "u2", clock())
    store.add_subscription(ML, "diffusion upvotes>=50", "u1", clock())
    papers = [paper("2411.00001", "Diffusion and segmentation", upvotes=3),
              paper("2411.00002", "Segmentation of diffusion", upvotes=4)]
    poller = Poller(store, clock)
    poller.BATCH, poller.GROUP_ROWS, poller.ENQUEUE_ROWS = 7, 10**6, 1  # one group, a transaction a channel
    poller.between_batches = lambda: (_ for _ in ()).throw(RuntimeError("killed between transactions"))
    assert not (await poller.poll(FakeSource(papers=papers))).ok
    assert len(store.unmatched_papers(100)) == 2  # the group's last transaction did not run
    poller.between_batches = None
    clock.advance(hours=1)
    relisted = [replace(papers[0], upvotes=80), papers[1]]
    report = await poller.poll(FakeSource(papers=relisted))
    assert report.ok and not store.unmatched_papers(100)
    assert sorted(queued(store)) == sorted([(p, early.key) for p in ("2411.00001", "2411.00002")] + [
        ("2411.00001", CV.key), ("2411.00001", ML.key), ("2411.00002", CV.key)])


KILLED_IN_A_GROUP = KILLED.replace("poller.BATCH, poller.GROUP_ROWS, poller.ENQUEUE_ROWS = 7, 4, 4",
                                   "poller.BATCH, poller.GROUP_ROWS, poller.ENQUEUE_ROWS = 7, 10**6, 1"
                                   ).replace("len(calls) == 4", "len(calls) == int(sys.argv[2])")


def deliveries(store: Store) -> list[tuple[str, str, str, int]]:
    return sorted(tuple(row) for row in store.db.execute("SELECT paper_id, channel, matched, strength FROM deliveries"))


async def test_a_process_killed_between_the_transactions_of_a_group_loses_and_doubles_nothing(tmp_path, clock):
    # One group for the whole listing, a transaction a channel (CV's, then ML's): killed after
    # the first, the papers are all still written down; the next poll queues ML's deliveries,
    # CV's once, each with the facts and strength a poll that was not killed gives them.
    whole = Store(tmp_path / "whole.db")
    subscribe(whole, clock)
    assert (await Poller(whole, clock).poll(FakeSource(papers=listing()))).ok
    path = tmp_path / "killed.db"
    store = Store(path)
    subscribe(store, clock)
    done = subprocess.run([sys.executable, "-c", KILLED_IN_A_GROUP, str(path), "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 9, done.stderr
    assert {channel for _, channel in queued(store)} == {CV.key} and len(store.unmatched_papers(100)) == 60
    report = await Poller(store, clock).poll(FakeSource(papers=listing()))
    assert report.ok and report.queued == len(expected(listing())) - len([p for p in listing() if "segm" in p.title])
    assert deliveries(store) == deliveries(whole) and len(queued(store)) == len(expected(listing()))
    assert not store.unmatched_papers(100)
    store.close()
    whole.close()
