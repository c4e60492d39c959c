"""Bursts are planned, and commands counted, in worker threads on connections of their own
(a big burst rewrites thousands of rows; a command's count waits behind a poll's writes):
the loop does neither, and the decisions hold as when they were made on the loop."""

import asyncio
import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest

import handlers
from bot.clock import utcnow
from bot.digest import DIGEST_MAX
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Match, PostResult
from storage import Store

from .fakes import paper, record_threads

CHANNEL = ChannelRef("slack", "C1")
CARDS = 3
ROWS = CARDS + DIGEST_MAX + 7  # 7 overflow


class Recording:
    """An adapter that posts everything at once and remembers what it posted."""

    def __init__(self):
        self.cards: list[str] = []
        self.digests: list[list[str]] = []

    async def post(self, channel, card):
        self.cards.append(card.paper_id)
        return PostResult(ok=True, message_id=f"m{len(self.cards)}")

    async def post_digest(self, digest):
        self.digests.append([card.paper_id for card in digest.cards])
        return PostResult(ok=True, message_id=f"d{len(self.digests)}")


def fill(store, count, start=0):
    """`count` papers for CHANNEL, paper n with n upvotes (the higher n, the better it ranks)."""
    ids = [f"2411.{n:05d}" for n in range(start, start + count)]
    store.add_papers([paper(f"2411.{n:05d}", f"Paper {n}", upvotes=n) for n in range(start, start + count)], utcnow())
    for pid in ids:
        store.enqueue(pid, [Match(1, CHANNEL, "diffusion", ("diffusion in title",))], utcnow())
    return ids


def decided(store):
    """(cards, digest members, overflow) of CHANNEL, as paper ids."""
    rows = store.db.execute("SELECT paper_id, card, in_digest, status FROM deliveries WHERE channel = ?",
                            [CHANNEL.key]).fetchall()
    return ({r[0] for r in rows if r[1]}, {r[0] for r in rows if r[2]}, {r[0] for r in rows if r[3] == "overflow"})


async def test_a_burst_is_planned_off_the_event_loop_and_goes_out_as_on_it(store, monkeypatch):
    best_first = fill(store, ROWS)[::-1]
    called_from = record_threads(store, monkeypatch, "plan_burst", "unannounced_overflow")
    adapter = Recording()
    report = await Dispatcher(store, {"slack": adapter}, cards_per_cycle=CARDS).dispatch()
    loop_thread = threading.get_ident()
    assert called_from["plan_burst"] and loop_thread not in called_from["plan_burst"]  # never planned on the loop
    assert len(called_from["unannounced_overflow"]) == 3 and loop_thread not in called_from["unannounced_overflow"]
    assert adapter.cards == best_first[:CARDS]
    assert adapter.digests == [best_first[CARDS:CARDS + DIGEST_MAX]]
    assert report.sent == CARDS + DIGEST_MAX and report.overflow == 7
    assert decided(store)[2] == set(best_first[CARDS + DIGEST_MAX:])


async def test_a_scheduled_digest_holds_back_off_the_event_loop(store, monkeypatch):
    best_first = fill(store, ROWS)[::-1]
    store.update_channel_settings(CHANNEL, utcnow() - timedelta(days=2), mode="daily", digest_time="09:00")
    called_from = record_threads(store, monkeypatch, "hold_back", "unannounced_overflow")
    adapter = Recording()
    report = await Dispatcher(store, {"slack": adapter}).dispatch_digests()
    loop_thread = threading.get_ident()
    assert called_from["hold_back"] and loop_thread not in called_from["hold_back"]
    assert called_from["unannounced_overflow"] and loop_thread not in called_from["unannounced_overflow"]
    assert adapter.digests == [best_first[:DIGEST_MAX]] and adapter.cards == []
    assert report.sent == DIGEST_MAX and report.overflow == ROWS - DIGEST_MAX
    assert decided(store)[2] == set(best_first[DIGEST_MAX:])


@contextmanager
def paused_in_first_plan(monkeypatch):
    """The first plan_burst made off the main thread stops inside its transaction, at its
    first overflow UPDATE (after it ranked and marked the cards and the digest), until
    `release` is set. Yields (paused, release)."""
    real = Store._thread_db
    paused, release = threading.Event(), threading.Event()

    @contextmanager
    def pausing(self):
        with real(self) as db:
            if paused.is_set() or threading.current_thread() is threading.main_thread():
                yield db
                return

            def trace(sql):
                if "SET status = 'overflow'" in sql and not paused.is_set():
                    paused.set()
                    release.wait(30)

            db.conn.set_trace_callback(trace)
            try:
                yield db
            finally:
                db.conn.set_trace_callback(None)

    monkeypatch.setattr(Store, "_thread_db", pausing)
    try:
        yield paused, release
    finally:
        release.set()


def test_a_burst_planned_in_a_worker_thread_holds_against_a_second_planner_and_a_writer(tmp_path, monkeypatch):
    """While one thread's plan is mid-transaction, a second planner (another thread of the same
    store) and a writer (another Store: another connection, as the poller's) both wait; then
    the second planner finds the burst decided, and the late paper, better than all, is not
    made a card: the digest is full, so it is overflow."""
    store = Store(tmp_path / "bot.db")
    try:
        best_first = fill(store, ROWS)[::-1]
        late = f"2411.{ROWS + 100:05d}"
        store.add_papers([paper(late, "Late", upvotes=10_000)], utcnow())
        plans: dict[str, object] = {}
        order: list[str] = []

        def plan(name):
            plans[name] = store.plan_burst(CHANNEL, utcnow(), CARDS, DIGEST_MAX)
            order.append(name)

        def write():  # a Store of its own, in its thread, as the poller's writer
            other = Store(tmp_path / "bot.db")
            try:
                other.enqueue(late, [Match(1, CHANNEL, "diffusion", ("diffusion in title",))], utcnow())
            finally:
                other.close()
            order.append("write")

        with paused_in_first_plan(monkeypatch) as (paused, release):
            first = threading.Thread(target=plan, args=("first",))
            first.start()
            assert paused.wait(30)
            second = threading.Thread(target=plan, args=("second",))
            writer = threading.Thread(target=write)
            second.start()
            writer.start()
            writer.join(1.0)  # a writer not held by the plan's transaction would be done by now
            second.join(0.1)
            assert order == []  # both still wait
            release.set()
            for thread in (first, second, writer):
                thread.join(30)
        assert order[0] == "first" and sorted(order) == ["first", "second", "write"]
        cards, digest, overflow = decided(store)
        assert cards == set(best_first[:CARDS]) and digest == set(best_first[CARDS:CARDS + DIGEST_MAX])
        assert plans["second"] in (plans["first"], type(plans["first"])([], []))  # nothing decided again
        assert [d.paper_id for d in plans["first"].cards] == best_first[:CARDS]
        # The late paper arrived after the decision: never a card; the digest is full, so overflow.
        store.plan_burst(CHANNEL, utcnow(), CARDS, DIGEST_MAX)
        cards, digest, overflow = decided(store)
        assert late not in cards and late not in digest and late in overflow
        assert len(cards) == CARDS and len(digest) == DIGEST_MAX
    finally:
        store.close()


@pytest.mark.backends
def test_commands_are_counted_off_the_event_loop_and_the_limit_holds(store, make_config, clock, monkeypatch):
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 2}), clock)
    called_from = []
    record_command = store.record_command

    def recorded(*args):
        called_from.append(threading.get_ident())
        return record_command(*args)

    monkeypatch.setattr(store, "record_command", recorded)

    async def run():
        return await handlers.handle(ctx, handlers.request_from_text(ChannelRef("console", "ml"), "ada", "help"))

    async def three():
        return [await run() for _ in range(3)], threading.get_ident()

    replies, loop_thread = asyncio.run(three())
    assert [r.ok for r in replies] == [True, True, False]
    assert "too fast" in replies[2].text
    assert len(called_from) == 3 and loop_thread not in called_from
    assert store.db.execute("SELECT count(*) FROM command_log").fetchone()[0] == 2  # seen by the store's own


def test_m025_one_outbox_index_that_counts_due_channels_without_reading_rows(store):
    indexes = {row[0]: row[1] for row in store.db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' AND sql IS NOT NULL")}
    assert "deliveries_due" not in indexes and "deliveries_channel" not in indexes
    assert "(status, channel, next_attempt_at)" in indexes["deliveries_outbox"]
    plan = " ".join(row[3] for row in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT channel, count(*), min(id) FROM deliveries"
        " WHERE status = 'pending' AND next_attempt_at <= ? GROUP BY channel", ["2026"]))
    assert "COVERING INDEX deliveries_outbox" in plan and "TEMP B-TREE" not in plan
    fill(store, 4)
    other = ChannelRef("slack", "C2")
    store.enqueue("2411.00000", [Match(2, other, "x", ())], utcnow())
    assert [(d.channel, d.due) for d in store.due_channels(utcnow())] == [(CHANNEL, 4), (other, 1)]
