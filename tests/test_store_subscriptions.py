"""The Store's subscriptions (and their change log), channel settings, --me people and
feedback, tested directly on both backends (tests/conftest.py: `backends`); and, on
PostgreSQL, what concurrent writers in other processes must not break, with two connections."""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from bot.matching import compile_query
from bot.models import (
    ChannelFeedback,
    ChannelRef,
    ChannelSettings,
    Feedback,
    Match,
    MostSavedSchedule,
    PaperMatches,
    Subscribed,
    Subscription,
    SubscriptionChanges,
    stored_subscription,
)

from .fakes import paper

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
ML = ChannelRef("console", "ml")
CV = ChannelRef("slack", "C123")
DM = ChannelRef("slack", "D9")
DISCORD = ChannelRef("discord", "42")


def _keep_papers(store, *ids: str) -> None:
    """Store papers for feedback to refer to."""
    store.add_papers([paper(i) for i in ids], T0)


# ---- subscriptions ------------------------------------------------------------------------------

@pytest.mark.backends
def test_subscriptions_are_idempotent_limited_and_never_reuse_ids_or_versions(store):
    first = store.add_subscription(ML, "diffusion", "u1", T0 + timedelta(microseconds=5))
    s1 = first.subscription
    assert first.created and s1.id == 1 and s1.created_at == T0 and s1.created_at.tzinfo == timezone.utc
    assert store.add_subscription(ML, "diffusion", "u2", T0) == Subscribed(s1, created=False)
    assert store.add_subscription(ML, "agents", "u1", T0, limit=1) == Subscribed(None, created=False)
    assert store.add_subscription(ML, "diffusion", "u1", T0, limit=1) == Subscribed(s1, created=False)
    v1 = store.subscriptions_version()
    s2 = store.add_subscription(ML, "agents", "u1", T0, limit=2).subscription
    assert s2.id == 2 and store.subscriptions_version() > v1
    assert store.count_subscriptions(ML) == 2 and store.count_subscriptions(CV) == 0
    assert store.newest_subscription_id() == 2 and store.subscription_ids() == {1, 2}

    v2 = store.subscriptions_version()
    assert store.remove_subscription(CV, s2.id) is None  # another channel's id
    assert store.subscriptions_version() == v2  # nothing removed, no new version
    assert store.remove_subscription(ML, s2.id) == s2
    assert store.remove_subscription(ML, s2.id) is None
    # Removed, the newest took neither its id nor its version with it; the removal gave a
    # new version (nothing else did: the refused removals above).
    v3 = store.subscriptions_version()
    assert store.newest_subscription_id() == 2 and v3 > v2
    assert store.subscriptions_changed_since(v2) == SubscriptionChanges([], v3)
    s3 = store.add_subscription(ML, "video", "u1", T0).subscription
    assert s3.id == 3 and store.subscriptions_version() > v3
    changes = store.subscriptions_changed_since(v2)
    assert [s.id for s in changes.subscriptions] == [3] and changes.version == store.subscriptions_version()
    assert store.subscriptions_changed_since(changes.version).subscriptions == []
    assert store.subscriptions_changed_since(changes.version).version == changes.version


@pytest.mark.backends
def test_lists_are_by_id_and_remove_all_returns_what_was_removed(store):
    for query, channel in [("a", ML), ("b", CV), ("c", ML)]:
        store.add_subscription(channel, query, "u1", T0)
    assert [s.query for s in store.subscriptions(ML)] == ["a", "c"]
    assert [s.query for s in store.subscriptions()] == ["a", "b", "c"]
    assert store.get_subscription(2).channel == CV and store.get_subscription(99) is None
    version = store.subscriptions_version()
    removed = store.remove_all_subscriptions(ML)
    assert [(s.id, s.query, s.delivered) for s in removed] == [(1, "a", 0), (3, "c", 0)]
    assert store.subscriptions_version() > version  # removing gives a new version (MatchedBatch.version)
    version = store.subscriptions_version()
    assert store.subscription_ids() == {2} and store.remove_all_subscriptions(ML) == []
    assert store.subscriptions_version() == version


@pytest.mark.backends
def test_changing_a_query_keeps_the_id_gives_a_new_version_and_refuses_what_it_must(store):
    sub = store.add_subscription(ML, "diffusion", "u1", T0).subscription
    store.add_subscription(ML, "agents", "u1", T0)
    seen = store.subscriptions_changed_since(0).version
    assert store.change_subscription_query(CV, sub.id, "video") is None
    assert store.change_subscription_query(ML, 99, "video") is None
    assert store.change_subscription_query(ML, sub.id, "video", expected="not it") == sub
    assert store.change_subscription_query(ML, sub.id, "agents") == sub  # the channel has it already
    assert store.subscriptions_changed_since(seen).subscriptions == []
    changed = store.change_subscription_query(ML, sub.id, "video", expected="diffusion")
    assert (changed.id, changed.query, changed.created_at) == (sub.id, "video", sub.created_at)
    after = store.subscriptions_changed_since(seen)
    assert [(s.id, s.query, s.compiled) for s in after.subscriptions] == [(sub.id, "video", compile_query("video"))]
    assert after.version > seen


@pytest.mark.backends
def test_compiled_forms_are_kept_without_a_new_version(store):
    sub = store.add_subscription(ML, "diffusion", "u1", T0).subscription
    broken = store.add_subscription(ML, "(unclosed", "u1", T0).subscription  # the engine parses (and skips) it
    changes = store.subscriptions_changed_since(0)
    assert {s.id: s.compiled for s in changes.subscriptions} == {sub.id: compile_query("diffusion"), broken.id: None}
    store.save_compiled_queries({broken.id: ("(unclosed", b"form"), 9999: ("x", b"gone")})
    store.save_compiled_queries({})
    assert store.subscriptions_changed_since(changes.version).subscriptions == []
    assert {s.id: s.compiled for s in store.subscriptions_changed_since(0).subscriptions}[broken.id] == b"form"


@pytest.mark.backends
def test_the_changes_read_are_the_same_values_as_the_subscriptions_listed(store):
    """`subscriptions_changed_since` makes its Subscriptions without the dataclass's
    `__init__` (`stored_subscription`): the same values, fields, hashes and reprs."""
    assert store.subscription_ids() == set()
    store.add_subscription(ML, "diffusion", "u1", T0)
    store.add_subscription(CV, "agents planning", "u2", T0 + timedelta(seconds=3))
    listed = {s.id: s for s in store.subscriptions()}
    read = store.subscriptions_changed_since(0).subscriptions
    assert len(read) == 2 and store.subscription_ids() == set(listed)
    for sub in read:
        same = listed[sub.id]
        assert sub == same and hash(sub) == hash(same) and repr(sub) == repr(same)
        assert vars(sub) == {**vars(same), "compiled": compile_query(same.query)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            sub.query = "changed"  # type: ignore[misc]


def test_a_stored_subscription_is_the_dataclass_made_otherwise():
    values = (7, CV, "agents", "u1", T0, 3, b"form")
    made, stored = Subscription(*values), stored_subscription(*values)
    assert type(stored) is Subscription and stored == made and hash(stored) == hash(made)
    assert repr(stored) == repr(made) and vars(stored) == vars(made)
    assert list(vars(stored)) == [f.name for f in dataclasses.fields(Subscription)]  # a new field: add it there
    assert dataclasses.replace(stored, query="x") == dataclasses.replace(made, query="x")


@pytest.mark.backends
def test_reading_the_changes_pauses_garbage_collection_and_leaves_it_as_it_was(store, monkeypatch):
    store.add_subscription(ML, "diffusion", "u1", T0)
    seen = []
    real = stored_subscription

    def made(*args):  # what storage makes for each row: is the collector on meanwhile?
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr(f"{type(store).__module__.rsplit('.', 1)[0]}.subscriptions.stored_subscription", made)
    assert gc.isenabled()
    assert [s.query for s in store.subscriptions_changed_since(0).subscriptions] == ["diffusion"]
    assert seen == [False] and gc.isenabled()
    gc.disable()  # turned off by someone else (Poller's no_collection): left off
    try:
        store.subscriptions_changed_since(0)
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.backends
def test_subscriptions_created_by_a_moment_or_up_to_an_id(store):
    store.add_subscription(ML, "a", "u1", T0)
    store.add_subscription(ML, "b", "u1", T0 + timedelta(hours=1))
    store.add_subscription(CV, "c", "u1", T0 + timedelta(hours=2))
    store.remove_subscription(ML, 1)
    assert store.subscriptions_created_by([1, 2, 3, 4], T0 + timedelta(hours=1)) == {2}
    assert store.subscriptions_created_by([1, 2, 3, 4], T0 - timedelta(hours=1), upto=3) == {2, 3}
    assert store.subscriptions_created_by([2, 3], T0, upto=2) == {2}
    assert store.subscriptions_created_by([], T0) == set()


# ---- channel settings -----------------------------------------------------------------------------

@pytest.mark.backends
def test_channel_settings_default_save_update_and_list(store):
    assert store.channel_settings(ML) == ChannelSettings(ML)
    assert store.all_channel_settings() == [] and store.digest_channels() == []
    later = T0 + timedelta(hours=1, microseconds=7)
    store.save_channel_settings(ChannelSettings(CV, mode="daily", timezone="Asia/Tokyo", last_digest_at=later,
                                                paused_reason="not kept: not paused"), T0)
    got = store.channel_settings(CV)
    assert (got.mode, got.timezone, got.last_digest_at, got.updated_at, got.paused_reason) == (
        "daily", "Asia/Tokyo", T0 + timedelta(hours=1), T0, None)
    store.save_channel_settings(ChannelSettings(ML, paused=True, paused_reason="channel_not_found"), T0)
    assert store.channel_settings(ML).paused_reason == "channel_not_found"
    store.save_channel_settings(ChannelSettings(DISCORD, mode="weekly", paused=True), T0)

    change = store.update_channel_settings(CV, T0 + timedelta(days=1), digest_time="18:30")
    assert change.before == got and change.after.digest_time == "18:30" and change.after.timezone == "Asia/Tokyo"
    assert store.channel_settings(CV).updated_at == T0 + timedelta(days=1)
    # By key, as bytes sort: "console:ml" < "discord:42" < "slack:C123".
    assert [s.channel for s in store.all_channel_settings()] == [ML, DISCORD, CV]
    assert [s.channel for s in store.digest_channels()] == [CV]  # instant and paused ones are not


# ---- people: --me ---------------------------------------------------------------------------------

@pytest.mark.backends
def test_me_subscribers_are_mentioned_once_in_the_order_they_came_and_go_with_the_subscription(store):
    a = store.add_subscription(CV, "diffusion", "U1", T0).subscription
    b = store.add_subscription(CV, "agents", "U9", T0).subscription
    assert store.add_subscriber(a.id, "U2", T0 + timedelta(minutes=2))
    assert store.add_subscriber(b.id, "U3", T0 + timedelta(minutes=1))
    assert store.add_subscriber(a.id, "U3", T0 + timedelta(minutes=3))
    assert not store.add_subscriber(a.id, "U2", T0 + timedelta(minutes=4))  # already
    assert not store.add_subscriber(999, "U2", T0)  # no such subscription
    assert store.subscribers([a.id, b.id]) == ["U3", "U2"] and store.subscribers([]) == []
    assert store.remove_subscriber(a.id, "U3") and not store.remove_subscriber(a.id, "U3")
    assert store.subscribers([a.id]) == ["U2"]
    store.remove_subscription(CV, a.id)
    assert store.subscribers([a.id]) == []


@pytest.mark.backends
def test_own_subscriptions_are_those_made_or_followed_in_channels_of_the_platform(store):
    mine = store.add_subscription(CV, "diffusion", "U1", T0).subscription
    followed = store.add_subscription(DM, "agents", "U2", T0).subscription
    store.add_subscription(ChannelRef("slack", "C7"), "video", "U2", T0)
    elsewhere = store.add_subscription(DISCORD, "robots", "U1", T0).subscription
    store.add_subscriber(followed.id, "U1", T0)
    assert [s.id for s in store.own_subscriptions("slack", "U1")] == [mine.id, followed.id]
    assert [s.id for s in store.own_subscriptions("slack", "U1", limit=1)] == [mine.id]
    assert [s.id for s in store.own_subscriptions("discord", "U1")] == [elsewhere.id]
    assert store.own_subscriptions("console", "U1") == []


# ---- feedback and the weekly most-saved digest ----------------------------------------------------

@pytest.mark.backends
def test_feedback_is_kept_once_and_taken_back_in_one_or_every_channel(store):
    _keep_papers(store, "2411.00001", "2411.00002")
    first = store.record_feedback("U1", CV, "2411.00001", "save", T0 + timedelta(microseconds=3))
    assert first == Feedback("U1", CV, "2411.00001", "save", T0, created=True)
    again = store.record_feedback("U1", CV, "2411.00001", "save", T0 + timedelta(minutes=5))
    assert not again.created and again.at == T0
    store.record_feedback("U1", DM, "2411.00001", "save", T0 + timedelta(minutes=1))
    store.record_feedback("U2", CV, "2411.00002", "not_relevant", T0 + timedelta(minutes=2))
    store.record_feedback("U2", CV, "2411.00002", "save", T0 + timedelta(minutes=3))
    assert store.channel_feedback(CV) == ChannelFeedback(saved=("2411.00002", "2411.00001"),
                                                         not_relevant=("2411.00002",))
    assert store.channel_feedback(CV, limit=1).saved == ("2411.00002",)
    assert store.channel_feedback(ML) == ChannelFeedback()
    assert store.remove_feedback("U1", CV, "2411.00001", "save") == 1
    assert store.channel_feedback(DM).saved == ("2411.00001",)
    store.record_feedback("U1", CV, "2411.00001", "save", T0)
    assert store.remove_feedback("U1", None, "2411.00001", "save") == 2
    assert store.remove_feedback("U1", None, "2411.00001", "save") == 0


@pytest.mark.backends
def test_saved_papers_filter_count_people_and_order_newest_or_most_saved(store):
    _keep_papers(store, "2411.00001", "2411.00002", "2411.00003")
    store.record_feedback("U1", CV, "2411.00001", "save", T0)
    store.record_feedback("U2", CV, "2411.00001", "save", T0 + timedelta(minutes=1))
    store.record_feedback("U1", CV, "2411.00002", "save", T0 + timedelta(minutes=2))
    store.record_feedback("U1", DISCORD, "2411.00003", "save", T0 + timedelta(minutes=3))
    store.record_feedback("U3", CV, "2411.00003", "not_relevant", T0 + timedelta(minutes=4))

    def listed(**kw):
        return [(s.paper.id, s.saves, s.saved_at) for s in store.saved_papers(**kw)]

    assert listed() == [("2411.00003", 1, T0 + timedelta(minutes=3)), ("2411.00002", 1, T0 + timedelta(minutes=2)),
                        ("2411.00001", 2, T0 + timedelta(minutes=1))]
    assert [p for p, _, _ in listed(most_saved=True)] == ["2411.00001", "2411.00003", "2411.00002"]
    assert [p for p, _, _ in listed(platform="slack")] == ["2411.00002", "2411.00001"]
    assert listed(user_id="U2") == [("2411.00001", 1, T0 + timedelta(minutes=1))]
    assert [p for p, _, _ in listed(channel=CV, since=T0 + timedelta(minutes=1))] == ["2411.00002", "2411.00001"]
    assert listed(channel=CV, since=T0 + timedelta(minutes=1))[1][1] == 1  # U1's earlier save is outside
    assert len(listed(limit=1)) == 1


@pytest.mark.backends
def test_delivered_matches_are_the_deliverys_reasons(store):
    _keep_papers(store, "2411.00001")
    match = Match(1, CV, "diffusion", ("diffusion in title",))
    if hasattr(store, "enqueue_many"):
        store.enqueue_many([PaperMatches("2411.00001", (match,))], T0)
    else:  # PgStore before its outbox is ported (storage/postgres/deliveries.py): the row alone
        store.db.execute("""INSERT INTO deliveries (paper_id, channel, matched, next_attempt_at, created_at)
                            VALUES ('2411.00001', %s, %s, %s, %s)""",
                         [CV.key, '[{"id": 1, "query": "diffusion", "terms": ["diffusion in title"]}]', T0, T0])
    assert store.delivered_matches(CV, "2411.00001") == [match]
    assert store.delivered_matches(ML, "2411.00001") == []


@pytest.mark.backends
def test_the_most_saved_schedule_is_set_listed_claimed_once_a_slot_and_turned_off(store):
    assert store.most_saved_schedule(CV) is None and store.most_saved_schedules() == []
    assert store.set_most_saved_schedule(CV, MostSavedSchedule(CV, "fri", "17:00"), T0) is None
    on = MostSavedSchedule(CV, "fri", "17:00", T0)  # counts from now: no digest for slots already past
    assert store.most_saved_schedule(CV) == on
    store.set_most_saved_schedule(ML, MostSavedSchedule(ML, "mon", "09:00", T0 - timedelta(days=9)), T0)
    assert store.most_saved_schedules() == [store.most_saved_schedule(ML), on]
    slot = T0 + timedelta(days=1)
    assert not store.claim_most_saved(CV, T0)  # not after its last slot
    assert store.claim_most_saved(CV, slot) and not store.claim_most_saved(CV, slot)
    assert store.most_saved_schedule(CV).last_sent_at == slot
    # A post that failed for a while gives its claim back (once), and the slot is claimed again.
    assert store.unclaim_most_saved(CV, slot, T0) and not store.unclaim_most_saved(CV, slot, T0)
    assert store.most_saved_schedule(CV).last_sent_at == T0
    assert store.claim_most_saved(CV, slot) and not store.claim_most_saved(CV, slot)
    assert not store.unclaim_most_saved(CV, slot - timedelta(days=7), T0)  # not the slot claimed
    assert store.most_saved_schedule(CV).last_sent_at == slot
    assert not store.claim_most_saved(DM, slot)  # no schedule
    assert store.set_most_saved_schedule(CV, None, T0) == MostSavedSchedule(CV, "fri", "17:00", slot)
    assert store.most_saved_schedule(CV) is None and not store.claim_most_saved(CV, slot + timedelta(days=7))


# ---- PostgreSQL: writers in other processes (two connections) --------------------------------------

@pytest.fixture
def pg(pg_url):
    """Open PgStores on one fresh schema (each its own connection, as another process's),
    and an autocommit connection to watch them from."""
    from storage.postgres import PgStore

    opened: list = []

    def open_one():
        opened.append(PgStore(pg_url, busy_timeout=30))
        return opened[-1]

    watcher = psycopg.connect(pg_url, autocommit=True)
    yield open_one, watcher
    watcher.close()
    for s in opened:
        s.close()


def _blocked_behind(watcher, other, call):
    """Start `call()` in a thread (it uses `other`'s connection) and wait until it either waits
    for a lock held by another transaction or finishes. Returns the thread, its result holder
    and whether it was seen waiting."""
    pid = other.db.conn.info.backend_pid
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", call()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20  # a bound for a broken build, not a measurement
    while time.monotonic() < deadline and thread.is_alive():
        if watcher.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", [pid]).fetchone()[0]:
            return thread, result, True
        time.sleep(0.005)
    return thread, result, False


def test_a_reader_never_sees_a_version_committed_before_a_lower_one_is(pg):
    open_one, watcher = pg
    first, second, engine = open_one(), open_one(), open_one()
    seen = engine.subscriptions_changed_since(0)
    loaded = {s.id for s in seen.subscriptions}
    with first.transaction():
        mine = first.add_subscription(ML, "diffusion", "u1", T0).subscription
        # Another process subscribes meanwhile: it waits for the first to commit, so it can
        # neither take the next version nor commit before it.
        thread, result, waited = _blocked_behind(watcher, second, lambda: second.add_subscription(
            CV, "agents", "u2", T0).subscription)
        # An engine catching up now finds nothing new and stays at its version.
        now = engine.subscriptions_changed_since(seen.version)
        loaded |= {s.id for s in now.subscriptions}
        seen = now
        assert engine.newest_subscription_id() == 0  # the first's id is not committed
    thread.join(30)
    caught_up = engine.subscriptions_changed_since(seen.version)
    loaded |= {s.id for s in caught_up.subscriptions}
    theirs = result["value"]
    assert loaded == {mine.id, theirs.id}  # neither was missed
    assert waited, "the second writer did not wait for the first's commit"
    assert theirs.id > mine.id and caught_up.version == engine.subscriptions_version() == 2
    assert engine.newest_subscription_id() == theirs.id


def test_a_subscription_added_while_papers_are_stored_gets_a_higher_id_than_theirs(pg):
    open_one, watcher = pg
    poller, command = open_one(), open_one()
    with poller.transaction():  # as the poller's _store_batch: the papers' `upto`
        upto = poller.newest_subscription_id()
        thread, result, waited = _blocked_behind(watcher, command, lambda: command.add_subscription(
            ML, "diffusion", "u1", T0).subscription)
    thread.join(30)
    assert waited  # committed after those papers, its --backfill sees them
    assert result["value"].id > upto


def test_a_subscription_is_not_removed_while_deliveries_for_it_are_being_queued(pg):
    open_one, watcher = pg
    writer, command = open_one(), open_one()
    sub = command.add_subscription(ML, "diffusion", "u1", T0).subscription
    with writer.transaction():  # as the poller's writer: read who receives, then queue for them
        assert writer.subscriptions_created_by([sub.id], T0) == {sub.id}
        thread, result, waited = _blocked_behind(watcher, command, lambda: command.remove_subscription(ML, sub.id))
        assert writer.subscription_ids() == {sub.id}
    thread.join(30)
    assert waited and result["value"] == sub and writer.subscription_ids() == set()


def test_two_processes_at_a_channels_limit_do_not_both_get_in(pg):
    open_one, watcher = pg
    first, second = open_one(), open_one()
    first.add_subscription(ML, "a", "u1", T0)
    with first.transaction():
        assert first.add_subscription(ML, "b", "u1", T0, limit=2).created
        thread, result, waited = _blocked_behind(watcher, second, lambda: second.add_subscription(
            ML, "c", "u2", T0, limit=2))
    thread.join(30)
    assert waited and result["value"] == Subscribed(None, created=False)
    assert second.count_subscriptions(ML) == 2


def test_many_processes_subscribing_one_channel_at_once_stop_at_its_limit(pg):
    open_one, _ = pg
    stores = [open_one() for _ in range(6)]
    start = threading.Barrier(len(stores))
    results: list = []

    def subscribe(n):
        start.wait()
        results.append(stores[n].add_subscription(ML, f"q{n}", f"u{n}", T0, limit=3))

    threads = [threading.Thread(target=subscribe, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r.created for r in results) == 3 and stores[0].count_subscriptions(ML) == 3
    assert sorted(stores[0].subscription_ids()) == [1, 2, 3]


def test_a_most_saved_slot_is_claimed_by_one_process(pg):
    open_one, watcher = pg
    first, second = open_one(), open_one()
    first.set_most_saved_schedule(CV, MostSavedSchedule(CV, "fri", "17:00"), T0)
    slot = T0 + timedelta(days=1)
    with first.transaction():
        assert first.claim_most_saved(CV, slot)
        thread, result, waited = _blocked_behind(watcher, second, lambda: second.claim_most_saved(CV, slot))
    thread.join(30)
    assert waited and result["value"] is False


def test_settings_changed_by_two_processes_at_once_both_stay(pg):
    open_one, watcher = pg
    first, second = open_one(), open_one()
    with first.transaction():
        first.update_channel_settings(CV, T0, mode="daily")
        thread, result, waited = _blocked_behind(watcher, second, lambda: second.update_channel_settings(
            CV, T0, timezone="Asia/Tokyo"))
    thread.join(30)
    assert waited and result["value"].before.mode == "daily"
    got = first.channel_settings(CV)
    assert (got.mode, got.timezone) == ("daily", "Asia/Tokyo")
