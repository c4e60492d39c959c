"""A delivery sweep's writes (a channel's lease, each card's claim and outcome) wait for the
write lock in worker threads, not on the event loop: while another connection holds the lock
(the poller's writer during a poll), the loop goes on answering (issue 11). An in-memory
store, which has one connection, keeps them on the loop."""

import asyncio
import sqlite3
import threading

import pytest

from bot.clock import utcnow
from bot.dispatch import Dispatcher
from bot.errors import StorageError
from bot.models import ChannelRef, Delivery, Match, PostResult
from storage import Store, reopen

from .fakes import RecordingAdapter, paper, record_threads

CHANNEL = ChannelRef("console", "general")
HOLD_AT_MOST = 3.0  # seconds the other connection keeps the lock if the loop never answers (the store waits 10)
WRITES = ("lease_channel", "release_channel", "claim_delivery", "mark_sent", "reschedule_delivery",
          "give_up_delivery")


def fill(store, papers: int) -> list[str]:
    ids = [f"2411.{i:05d}" for i in range(papers)]
    store.add_papers([paper(i, f"Paper {i}") for i in ids], utcnow())
    for paper_id in ids:
        store.enqueue(paper_id, [Match(1, CHANNEL, "diffusion", ("diffusion in title",))], utcnow())
    return ids


def hold_the_write_lock(path: str, taken: threading.Event, answered: threading.Event, outcome: list[bool]) -> None:
    """Another connection (as the poller's writer) holds SQLite's write lock until the event loop
    has answered, or HOLD_AT_MOST; `outcome` says whether the loop answered meanwhile."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        outcome.append(answered.wait(HOLD_AT_MOST))
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.parametrize("write", ["lease_channel", "claim_delivery", "mark_sent", "release_channel"])
async def test_the_loop_answers_while_a_sweeps_write_waits_for_the_lock(store, monkeypatch, write):
    fill(store, 3)
    taken, entered, answered = threading.Event(), threading.Event(), threading.Event()
    outcome: list[bool] = []
    holder = threading.Thread(target=hold_the_write_lock, args=(store.path, taken, answered, outcome))
    real = getattr(store, write)

    def locked_first(*args):
        if not holder.is_alive() and not outcome:  # its first call: the lock is another's by now
            holder.start()
            assert taken.wait(5)
            entered.set()
        return real(*args)

    monkeypatch.setattr(store, write, locked_first)
    adapter = RecordingAdapter()
    sweep = asyncio.create_task(Dispatcher(store, {"console": adapter}, cards_per_cycle=3).dispatch())
    while not entered.is_set() and not sweep.done():
        await asyncio.sleep(0.001)  # on the loop: runs only while the loop is free
    answered.set()
    report = await sweep
    holder.join()
    assert outcome == [True]  # the loop ran while the write waited: the holder let go at its word
    assert report.sent == 3 and len(adapter.posts) == 3  # and the sweep went on as ever after


async def test_every_write_of_a_sweep_runs_off_the_loop(store, monkeypatch):
    fill(store, 5)  # 3 cards (sent, retried, given up) and a digest of 2
    called_from = record_threads(store, monkeypatch, *WRITES)
    adapter = RecordingAdapter(results=[PostResult(ok=True, message_id="m1"),
                                        PostResult(ok=False, error="timeout", retryable=True),
                                        PostResult(ok=False, error="invalid_blocks", retryable=False)])
    report = await Dispatcher(store, {"console": adapter}, cards_per_cycle=3).dispatch()
    assert (report.sent, report.retrying, report.failed) == (3, 1, 1)  # a card and the digest's two
    assert len(adapter.digests) == 1
    assert all(called_from.values())  # each was called
    assert threading.get_ident() not in set().union(*called_from.values())  # none on the loop's thread
    assert store.count_pending(CHANNEL) == 1  # the retried card; the rest settled as before


async def test_an_in_memory_store_keeps_its_writes_on_the_loop(monkeypatch):
    store = Store(":memory:")
    try:
        fill(store, 2)
        threads: set[int] = set()
        real = store.claim_delivery

        def recorded(*args):
            threads.add(threading.get_ident())
            return real(*args)

        monkeypatch.setattr(store, "claim_delivery", recorded)
        report = await Dispatcher(store, {"console": RecordingAdapter()}, cards_per_cycle=3).dispatch()
        assert report.sent == 2
        assert threads == {threading.get_ident()}  # one connection, bound to the loop's thread
    finally:
        store.close()


async def test_the_follow_ups_writes_run_off_the_loop_too(store, monkeypatch):
    paper_id = "2611.00042"
    store.add_papers([paper(paper_id, upvotes=0)], utcnow())
    sub = store.add_subscription(CHANNEL, "diffusion", "U1", utcnow()).subscription
    store.enqueue(paper_id, [Match(sub.id, CHANNEL, sub.query, ())], utcnow())
    (delivery_id,) = store.db.execute("SELECT id FROM deliveries").fetchone()
    store.mark_sent(delivery_id, "m1", utcnow())  # its card is in the channel
    store.add_papers([paper(paper_id, upvotes=60, github="https://github.com/acme/x")], utcnow())  # two events
    names = ("claim_followup", "mark_followup_sent", "reschedule_followup")
    called_from = record_threads(store, monkeypatch, *names)
    adapter = RecordingAdapter()
    adapter.reply_results = [PostResult(ok=True, message_id="r1"),
                             PostResult(ok=False, error="timeout", retryable=True)]
    report = await Dispatcher(store, {"console": adapter}).dispatch_followups()
    assert (report.sent, report.retrying) == (1, 1)
    assert all(called_from.values())
    assert threading.get_ident() not in set().union(*called_from.values())


def claim_in_a_thread_after_close(store) -> Delivery:
    """Queue one delivery, close the store, then claim it from a worker thread: the claim must
    fail with StorageError (once). Returns the delivery."""
    fill(store, 1)
    delivery = store.pending_for_channel(CHANNEL)[0]
    store.close()
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            store.claim_delivery(delivery.id, utcnow())
        except StorageError as exc:
            errors.append(exc)

    worker = threading.Thread(target=claim)
    worker.start()
    worker.join()
    assert len(errors) == 1
    return delivery


def assert_still_pending(again, delivery: Delivery) -> None:
    """`again` (the same database, opened anew) has the delivery pending, nothing mid-send; closes it."""
    try:
        assert again.unfinished_deliveries() == []
        assert [d.id for d in again.pending_for_channel(CHANNEL)] == [delivery.id]
    finally:
        again.close()


def test_a_worker_threads_write_after_close_fails_and_writes_nothing(tmp_path):
    """A sweep left running past shutdown (its claim's thread still going when the store
    closes) must not write: before the store opened the thread a new connection (kept
    forever) and took the liveness lock again, and the row was claimed after close."""
    path = str(tmp_path / "bot.db")
    store = Store(path)
    delivery = claim_in_a_thread_after_close(store)
    assert not store._thread_dbs and store._alive is None  # no connection, no lock file held
    assert not list(tmp_path.glob("bot.db.sender-*.lock"))
    assert_still_pending(Store(path), delivery)


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_a_worker_threads_claim_after_close_fails_on_postgresql_too(store):
    """As above: the thread's closed connection was reconnected (never closed again) and the
    liveness lock taken on a new session, and the row claimed after close."""
    delivery = claim_in_a_thread_after_close(store)
    assert_still_pending(reopen(store), delivery)
