"""The outbox and the follow-ups' delivery side, at the Store: the same behaviour on SQLite and
PostgreSQL (each test runs on both, tests/conftest.py); and, on PostgreSQL, several
deliverers at once: a row is claimed by one of them only, a channel's burst is planned once."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from bot.models import (
    BurstPlan,
    ChannelRef,
    ChannelSettings,
    FollowUp,
    Match,
    OutboxCounts,
    PaperMatches,
    SubscriptionRef,
    ThreadRef,
)

from .fakes import paper, sql, stored, subscribed

pytestmark = pytest.mark.backends

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
ML = ChannelRef("console", "ml")
CV = ChannelRef("slack", "C123")


def queue(store, channel, count, *, start=0, upvotes=None, now=T0) -> list[str]:
    """`count` stored papers owed to `channel`; upvotes[i] for the i-th if given."""
    ids = [f"2411.{n:05d}" for n in range(start, start + count)]
    stored(store, *[paper(i, f"Paper {i}", upvotes=upvotes[n] if upvotes else None) for n, i in enumerate(ids)])
    store.enqueue_many([PaperMatches(i, (Match(1, channel, "q", ("q in title",)),)) for i in ids], now)
    return ids


def ids(deliveries) -> list[str]:
    return [d.paper_id for d in deliveries]


def decided(store, channel) -> dict[str, tuple[int, bool, str]]:
    rows = sql(store, "SELECT paper_id, card, in_digest, status FROM deliveries WHERE channel = ?", [channel.key])
    return {r[0]: (int(r[1]), bool(r[2]), r[3]) for r in rows}


# ---- queueing ------------------------------------------------------------------------------------


def test_enqueue_many_makes_one_row_per_paper_and_channel_in_the_order_given(store):
    stored(store, *[paper(f"2410.0000{n}") for n in range(1, 4)])
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    assert store.enqueue("2410.00002", [Match(1, b, "x", ())], T0) == 1
    items = [PaperMatches("2410.00003", (Match(1, a, "x", ()),)),
             PaperMatches("2410.00001", (Match(1, a, "x", ()), Match(2, b, "y", ("y in title",)))),
             PaperMatches("2410.00002", (Match(1, b, "x", ()), Match(3, a, "z", ("z in abstract",))))]
    assert store.enqueue_many(items, T0) == 4  # (00002, b) was there already
    assert store.enqueue_many(items, T0 + timedelta(hours=1)) == 0
    rows = sql(store, "SELECT paper_id, channel FROM deliveries ORDER BY id")
    assert rows == [("2410.00002", b.key), ("2410.00003", a.key), ("2410.00001", a.key), ("2410.00001", b.key),
                    ("2410.00002", a.key)]
    (kept,) = [d for d in store.pending_for_channel(b) if d.paper_id == "2410.00002"]
    assert kept.matched == (Match(1, b, "x", ()),)  # the first queueing's matches stay
    assert store.count_pending() == 5 and store.count_pending(a) == 3
    assert store.enqueue_many([], T0) == 0 and store.enqueue_many([PaperMatches("2410.00001", ())], T0) == 0


def test_enqueue_many_twice_in_one_transaction_and_a_rolled_back_one(store):
    stored(store, paper("2410.00001"), paper("2410.00002"))
    with store.transaction():
        assert store.enqueue_many([PaperMatches("2410.00001", (Match(1, ML, "x", ()),))], T0) == 1
        assert store.enqueue_many([PaperMatches("2410.00002", (Match(1, ML, "x", ()),))], T0) == 1
    with pytest.raises(RuntimeError):
        with store.transaction():
            assert store.enqueue_many([PaperMatches("2410.00001", (Match(1, CV, "x", ()),))], T0) == 1
            raise RuntimeError("rolled back")
    assert ids(store.pending_for_channel(ML)) == ["2410.00001", "2410.00002"] and store.count_pending() == 2


def test_a_query_text_with_quotes_and_markup_comes_back_as_it_went_in(store):
    stored(store, paper("2410.00001"))
    matches = (Match(7, ML, "a 'quoted' \"query\"; `x` %s %(y)s \\ é", ("a in title", "cat:cs.LG")),
               Match(8, ML, "b", ()))
    store.enqueue_many([PaperMatches("2410.00001", matches)], T0)
    (delivery,) = store.pending_for_channel(ML)
    assert delivery.matched == matches and delivery.attempts == 0 and not delivery.in_digest


def test_a_nul_character_in_a_query_or_an_error_fails_nothing(store):
    # PostgreSQL's text and jsonb refuse NUL (U+FFFD in its place there); SQLite's JSON cuts the text at it.
    stored(store, paper("2410.00001"))
    assert store.enqueue("2410.00001", [Match(1, ML, "a\x00b", ("a\x00 in title",))], T0) == 1
    (delivery,) = store.pending_for_channel(ML)
    assert [(m.query[:1], m.terms[0][:1]) for m in delivery.matched] == [("a", "a")]
    store.reschedule_delivery(delivery.id, "bad\x00body", T0)
    store.give_up_delivery(delivery.id, "bad\x00body")
    assert sql(store, "SELECT status FROM deliveries") == [("failed",)]


# ---- planning ------------------------------------------------------------------------------------


def test_due_channels_counts_due_rows_of_instant_unpaused_channels_longest_waiting_first(store):
    paused, daily, later = (ChannelRef("console", n) for n in ("paused", "daily", "later"))
    queue(store, CV, 2, start=0)
    queue(store, ML, 3, start=10)
    queue(store, paused, 1, start=20)
    queue(store, daily, 1, start=30)
    queue(store, later, 1, start=40, now=T0 + timedelta(hours=1))
    store.save_channel_settings(ChannelSettings(paused, paused=True), T0)
    store.save_channel_settings(ChannelSettings(daily, mode="daily"), T0)
    assert [(c.channel, c.due) for c in store.due_channels(T0)] == [(CV, 2), (ML, 3)]
    (first,) = store.pending_for_channel(CV, limit=1)
    store.reschedule_delivery(first.id, "HTTP 500", T0 + timedelta(hours=2))
    assert [(c.channel, c.due) for c in store.due_channels(T0 + timedelta(hours=1))] == [(CV, 1), (ML, 3), (later, 1)]


def test_room_for_all_makes_them_cards_and_nothing_else(store):
    queue(store, ML, 2)
    plan = store.plan_burst(ML, T0, 3, 4)
    assert len(plan.cards) == 2 and plan.digest == []
    assert all(card == 1 and not in_digest and status == "pending" for card, in_digest, status in
               decided(store, ML).values())


def test_a_burst_is_the_best_cards_one_digest_and_the_rest_settled_once(store):
    votes = [5, None, 40, 3, 7, 60, 1, None, 2, 9]
    queue(store, ML, 10, upvotes=votes)
    plan = store.plan_burst(ML, T0, 3, 4)
    ranked = [f"2411.{n:05d}" for n in sorted(range(10), key=lambda n: (votes[n] is None, -(votes[n] or 0), n))]
    assert ids(plan.cards) == ranked[:3] and ids(plan.digest) == ranked[3:7]
    assert all(d.in_digest for d in plan.digest) and not any(d.in_digest for d in plan.cards)
    assert store.delivery_counts() == OutboxCounts(pending=7, overflow=3)
    overflow = store.unannounced_overflow(ML)
    assert overflow.count == 3
    assert overflow.up_to == max(r[0] for r in sql(store, "SELECT id FROM deliveries WHERE status = 'overflow'"))
    before = decided(store, ML)
    assert store.plan_burst(ML, T0, 3, 4) == plan  # decided once: the same plan again
    assert decided(store, ML) == before
    # Not due yet: decided, not offered.
    store.reschedule_delivery(plan.cards[0].id, "rate limited", T0 + timedelta(minutes=5))
    again = store.plan_burst(ML, T0, 3, 4)
    assert ids(again.cards) == ranked[1:3] and ids(again.digest) == ranked[3:7]


def test_arrivals_during_a_burst_join_its_digest_while_it_has_room_then_the_overflow(store):
    queue(store, ML, 6, upvotes=[6, 5, 4, 3, 2, 1])
    plan = store.plan_burst(ML, T0, 3, 4)
    assert (len(plan.cards), len(plan.digest)) == (3, 3)
    queue(store, ML, 2, start=100, upvotes=[100, 50])  # better than anything: still never cards
    plan = store.plan_burst(ML, T0, 3, 4)
    assert ids(plan.cards) == [f"2411.{n:05d}" for n in range(3)]
    assert ids(plan.digest) == ["2411.00100", "2411.00003", "2411.00004", "2411.00005"]
    assert decided(store, ML)["2411.00101"] == (0, False, "overflow")
    # The digest claimed (being sent): nothing is due, nothing is decided; arrivals wait for the next burst.
    assert store.claim_delivery(plan.digest[0].id, T0)
    queue(store, ML, 1, start=200)
    assert store.plan_burst(ML, T0, 3, 4) == BurstPlan([], [])
    assert decided(store, ML)["2411.00200"] == (0, False, "pending")


def test_a_digest_longer_than_it_may_be_is_cut_to_its_best(store):
    queue(store, ML, 6, upvotes=[1, 2, 3, 4, 5, 6])
    sql(store, "UPDATE deliveries SET in_digest = ?", [True])  # an outbox from before digests had a limit
    plan = store.plan_burst(ML, T0, 3, 4)
    assert plan.cards == [] and ids(plan.digest) == [f"2411.{n:05d}" for n in (5, 4, 3, 2)]
    assert store.delivery_counts() == OutboxCounts(pending=4, overflow=2)


def test_ranking_upvotes_then_match_strength_then_newest_then_oldest_row(store):
    day = datetime(2026, 11, 20, tzinfo=timezone.utc)
    stored(store, *[paper(f"2411.{n:05d}", upvotes=None if n == 0 else 5 if n < 8 else 9,
                          published=day + timedelta(hours=n % 3)) for n in range(9)])
    terms = {1: ("a in title", "b in title"), 2: ("a in title",), 3: ("a in abstract", "b in abstract", "c"),
             4: ("a in title", "b in abstract"), 5: ("a in abstract",), 6: ("a in abstract",), 7: ("a in abstract",)}
    store.enqueue_many([PaperMatches(f"2411.{n:05d}", (Match(1, ML, "q", terms.get(n, ())),)) for n in range(9)], T0)
    # 8: most upvoted; then title hits, then terms; among equals (5, 6, 7: one term each) the newest
    # (published +2h, +0h, +1h); 0: upvotes unknown, last.
    expected = [f"2411.{n:05d}" for n in (8, 1, 4, 2, 3, 5, 7, 6, 0)]
    assert ids(store.pending_for_channel(ML)) == expected
    sql(store, "UPDATE deliveries SET strength = NULL")  # rows queued without it: worked out of `matched`
    assert ids(store.pending_for_channel(ML)) == expected
    assert ids(store.pending_for_channel(ML, limit=2)) == expected[:2]
    store.hold_back(ML, 3)  # a scheduled digest of 3: the best 3 stay
    assert ids(store.pending_for_channel(ML)) == expected[:3]
    assert store.delivery_counts() == OutboxCounts(pending=3, overflow=6)


def test_a_digest_records_the_overflow_it_counted_and_later_overflow_stays_untold(store):
    queue(store, ML, 5)
    store.hold_back(ML, 1)
    told = store.unannounced_overflow(ML)
    assert told.count == 4
    queue(store, ML, 3, start=100)
    store.hold_back(ML, 1)
    store.announce_overflow(ML, told.up_to, "d1", T0)
    assert store.unannounced_overflow(ML).count == 3
    assert sql(store, "SELECT count(*) FROM deliveries WHERE message_id = 'd1'") == [(4,)]
    store.announce_overflow(ML, store.unannounced_overflow(ML).up_to, None, T0)
    assert store.unannounced_overflow(ML).count == 0 and store.unannounced_overflow(CV).count == 0


# ---- sending ----------------------------------------------------------------------------------


def test_a_delivery_is_claimed_once_retried_sent_and_counted_for_its_subscriptions(store):
    assert subscribed(store, ML, "diffusion") == 1 and subscribed(store, ML, "video") == 2
    stored(store, paper("2410.00001"), paper("2410.00002"))
    store.enqueue("2410.00001", [Match(2, ML, "video", ()), Match(1, ML, "diffusion", ()),
                                 Match(99, ML, "removed since", ())], T0)
    (delivery,) = store.pending_for_channel(ML)
    assert store.delivery_subscriptions(delivery.id) == [SubscriptionRef(1, "diffusion"), SubscriptionRef(2, "video")]
    assert store.claim_delivery(delivery.id, T0)
    assert not store.claim_delivery(delivery.id, T0)
    assert store.count_pending() == 0 and store.delivery_counts() == OutboxCounts(sending=1)
    store.reschedule_delivery(delivery.id, "x" * 600, T0 + timedelta(minutes=1))
    assert sql(store, "SELECT length(error), status FROM deliveries") == [(500, "pending")]
    (retry,) = store.pending_for_channel(ML)
    assert retry.attempts == 1 and store.last_sent_at() is None
    assert store.claim_delivery(retry.id, T0 + timedelta(minutes=1))
    store.mark_sent(retry.id, "ts-1", T0 + timedelta(minutes=1, microseconds=5))
    store.mark_sent(retry.id, "ts-1", T0 + timedelta(minutes=1))  # again: counted once
    assert [(s.id, s.delivered) for s in store.subscriptions(ML)] == [(1, 1), (2, 1)]
    assert store.last_sent_at() == T0 + timedelta(minutes=1) == store.last_sent_at(ML)
    assert store.last_sent_at(CV) is None
    store.enqueue("2410.00002", [Match(1, CV, "diffusion", ())], T0)
    (other,) = store.pending_for_channel(CV)
    store.give_up_delivery(other.id, "channel_not_found")
    assert store.delivery_counts() == OutboxCounts(sent=1, failed=1)
    assert store.pending_for_channel(CV) == [] and store.due_channels(T0 + timedelta(days=1)) == []


def test_a_crash_mid_send_is_released_without_using_up_an_attempt(store):
    queue(store, ML, 2)
    first, second = store.pending_for_channel(ML)
    assert store.claim_delivery(first.id, T0 + timedelta(microseconds=7)) and store.claim_delivery(second.id)
    unfinished = store.unfinished_deliveries()
    assert [(d.id, d.claimed_at, d.matched) for d in unfinished] == [(first.id, T0, first.matched),
                                                                      (second.id, None, second.matched)]
    for _ in range(3):
        store.release_delivery(first.id)  # only a 'sending' one goes back
    store.release_delivery(second.id)
    assert store.unfinished_deliveries() == [] and [d.attempts for d in store.pending_for_channel(ML)] == [0, 0]


# ---- follow-ups ----------------------------------------------------------------------------------


def card_posted(store, channel: ChannelRef, message_id: str, paper_id: str = "2410.00001") -> int:
    """A card of `paper_id` sent to `channel` as `message_id`; its id."""
    store.enqueue(paper_id, [Match(1, channel, "q", ())], T0)
    ((delivery_id,),) = sql(store, "SELECT id FROM deliveries WHERE paper_id = ? AND channel = ?",
                            [paper_id, channel.key])
    store.mark_sent(delivery_id, message_id, T0)
    return delivery_id


def followup(store, delivery_id: int, kind: str = "code", value: int = 0, url: str | None = None) -> int:
    sql(store, """INSERT INTO followups (delivery_id, kind, value, url, next_attempt_at, created_at)
                  VALUES (?, ?, ?, ?, ?, ?)""", [delivery_id, kind, value, url, T0.isoformat(), T0.isoformat()])
    return int(sql(store, "SELECT max(id) FROM followups")[0][0])


def test_followups_are_on_until_turned_off(store):
    assert store.followups_enabled(ML)
    assert store.set_followups(ML, False, T0) is True
    assert not store.followups_enabled(ML) and store.followups_enabled(CV)
    assert store.set_followups(ML, False, T0) is False
    assert store.set_followups(ML, True, T0) is False and store.followups_enabled(ML)


def test_due_followups_skips_those_it_may_not_send_and_waits_for_a_card_being_sent(store):
    stored(store, paper("2410.00001"), paper("2410.00002"))
    card = card_posted(store, ML, "m1")
    off = card_posted(store, ChannelRef("console", "off"), "m2")
    digest = card_posted(store, ChannelRef("console", "digest"), "d1")
    card_posted(store, ChannelRef("console", "digest"), "d1", "2410.00002")  # the same message: a digest
    paused = card_posted(store, ChannelRef("console", "paused"), "m3")
    store.enqueue("2410.00001", [Match(1, CV, "q", ())], T0)
    ((busy,),) = sql(store, "SELECT id FROM deliveries WHERE channel = ?", [CV.key])
    assert store.claim_delivery(busy, T0)
    wanted = followup(store, card, "code", 0, "https://github.com/a/b")
    skipped = [followup(store, off), followup(store, digest)]
    waiting = [followup(store, paused), followup(store, busy, "upvotes", 50)]
    store.set_followups(ChannelRef("console", "off"), False, T0)
    store.save_channel_settings(ChannelSettings(ChannelRef("console", "paused"), paused=True), T0)
    assert store.due_followups(T0 - timedelta(seconds=1), 10) == []  # not due yet
    assert store.due_followups(T0, 10) == [FollowUp(wanted, "2410.00001", ThreadRef(ML, "m1"), "code", 0,
                                                    "https://github.com/a/b")]
    statuses = dict(sql(store, "SELECT id, status FROM followups"))
    assert [statuses[i] for i in skipped] == ["skipped", "skipped"]
    assert [statuses[i] for i in waiting] == ["pending", "pending"]
    errors = [e for (e,) in sql(store, "SELECT error FROM followups WHERE status = 'skipped' ORDER BY id")]
    assert errors == ["follow-ups turned off in console:off", "its card was not posted alone (delivery sent)"]
    store.mark_sent(busy, "m4", T0)
    assert [f.id for f in store.due_followups(T0, 10)] == [wanted, waiting[1]]
    assert [f.id for f in store.due_followups(T0, 1)] == [wanted]


def test_a_followup_is_claimed_once_and_a_crash_mid_send_is_released(store):
    stored(store, paper("2410.00001"))
    first, second = followup(store, card_posted(store, ML, "m1")), followup(store, card_posted(store, CV, "m2"))
    assert store.claim_followup(first, T0) and not store.claim_followup(first, T0)
    (unfinished,) = store.unfinished_followups()
    assert (unfinished.id, unfinished.attempts, unfinished.claimed_at, unfinished.thread) == \
        (first, 1, T0, ThreadRef(ML, "m1"))
    store.release_followup(first)
    store.release_followup(first)
    assert store.unfinished_followups() == [] and [f.attempts for f in store.due_followups(T0, 10)] == [0, 0]
    assert store.claim_followup(first, T0)
    store.reschedule_followup(first, "y" * 501, T0 + timedelta(minutes=5))
    assert [f.id for f in store.due_followups(T0, 10)] == [second]
    assert store.claim_followup(first, T0 + timedelta(minutes=5))
    store.mark_followup_sent(first, "r1", T0 + timedelta(minutes=5))
    assert store.claim_followup(second, T0)
    store.give_up_followup(second, "thread gone")
    assert sql(store, "SELECT id, status, attempts, length(error), message_id FROM followups ORDER BY id") == [
        (first, "sent", 2, None, "r1"), (second, "failed", 1, len("thread gone"), None)]
    assert store.due_followups(T0 + timedelta(days=1), 10) == []


# ---- several deliverers at once (PostgreSQL) ---------------------------------------------------


def _side_by_side(count: int, work) -> list:
    """Run work(i) on `count` threads released together; their results."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


@pytest.fixture
def pg_store(pg_url):
    from storage.postgres import PgStore

    store = PgStore(pg_url)
    yield store
    store.close()


def test_deliverers_claiming_the_same_due_rows_at_once_never_get_the_same_row(pg_store, pg_url):
    from storage.postgres import PgStore

    store = pg_store
    queue(store, ML, 120)
    rows = [i for (i,) in sql(store, "SELECT id FROM deliveries ORDER BY id")]
    with store.transaction():
        for delivery_id in rows[::2]:
            store.mark_sent(delivery_id, f"m{delivery_id}", T0)
    stores = [PgStore(pg_url) for _ in range(3)]
    try:
        due = [d.id for d in store.pending_for_channel(ML, limit=1000)]
        assert sorted(due) == rows[1::2]
        claimed = _side_by_side(3, lambda i: [d for d in due if stores[i].claim_delivery(d, T0)])
        assert sorted(sum(claimed, [])) == sorted(due)  # each exactly once
        with store.transaction():
            followups = [followup(store, d) for d in rows[::2]]
        taken = _side_by_side(3, lambda i: [f for f in followups if stores[i].claim_followup(f, T0)])
        assert sorted(sum(taken, [])) == sorted(followups)
    finally:
        for s in stores:
            s.close()


def test_deliverers_planning_one_channel_at_once_decide_its_burst_once(pg_store, pg_url):
    from storage.postgres import PgStore

    store = pg_store
    queue(store, ML, 40, upvotes=list(range(40)))
    stores = [PgStore(pg_url) for _ in range(4)]
    try:
        plans = _side_by_side(4, lambda i: stores[i].plan_burst(ML, T0, 3, 4))
    finally:
        for s in stores:
            s.close()
    assert all(plan == plans[0] for plan in plans)
    assert ids(plans[0].cards) == [f"2411.{n:05d}" for n in (39, 38, 37)]
    rows = decided(store, ML).values()
    assert (sum(card for card, _, _ in rows), sum(d for _, d, _ in rows)) == (3, 4)
    assert store.delivery_counts() == OutboxCounts(pending=7, overflow=33)


def test_a_plan_waits_for_a_digest_being_claimed_then_decides_nothing(pg_store, pg_url):
    # The digest's "and N more" is written once it is claimed: a plan made meanwhile in another
    # process must see it claimed (and leave what arrived for the next burst), not join it.
    from storage.postgres import PgStore

    store = pg_store
    queue(store, ML, 6, upvotes=[6, 5, 4, 3, 2, 1])
    digest = store.plan_burst(ML, T0, 3, 4).digest
    queue(store, ML, 1, start=100)
    claimer, planner = PgStore(pg_url), PgStore(pg_url)
    plans: list[BurstPlan] = []
    pids: list[int] = []

    def plan():  # in a thread of its own: on that thread's connection (plan_burst is "any thread")
        with planner._reader() as db:
            pids.append(db.conn.info.backend_pid)
        plans.append(planner.plan_burst(ML, T0, 3, 4))

    thread = threading.Thread(target=plan)
    try:
        with claimer.transaction():
            assert claimer.claim_delivery(digest[0].id, T0)
            thread.start()
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = ? AND wait_event_type = 'Lock'"
            for _ in range(3000):  # until the plan waits for the claim (or, wrongly, has finished)
                if not thread.is_alive() or pids and sql(store, waiting, pids) == [(1,)]:
                    break
                threading.Event().wait(0.01)
        thread.join()
    finally:
        claimer.close()
        planner.close()
    assert plans == [BurstPlan([], [])]
    assert decided(store, ML)["2411.00100"] == (0, False, "pending")


def test_a_plan_from_a_worker_thread_is_made_on_a_connection_of_its_own(pg_store):
    # plan_burst, hold_back and unannounced_overflow are "any thread": off the store's thread
    # they must not join (or interleave with) the transaction the store's thread has open.
    store = pg_store
    queue(store, ML, 2)
    results: list = []

    def in_a_worker():
        results.append(store.plan_burst(ML, T0, 3, 4))
        store.hold_back(CV, 0)
        results.append(store.unannounced_overflow(CV))

    with store.transaction():
        queue(store, ML, 1, start=100)  # not committed while the worker plans
        queue(store, CV, 1, start=200)
        thread = threading.Thread(target=in_a_worker)
        thread.start()
        thread.join()
    plan, overflow = results
    assert ids(plan.cards) == ["2411.00000", "2411.00001"] and overflow.count == 0
    assert decided(store, ML)["2411.00100"] == (0, False, "pending")
