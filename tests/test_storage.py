import dataclasses
import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from sqlite_utils import Database

from bot.cards import why_matched
from bot.models import (
    ChannelRef,
    Match,
    MatchedBatch,
    OutboxCounts,
    PaperMatches,
    Subscribed,
    UnmatchedPaper,
    Validators,
)
from bot.query import normalize_query
from storage import Store
from storage.deliveries import match_strength
from storage.migrations import migrations

from .fakes import due_now, paper, sql, stored, subscribed

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
ML = ChannelRef("console", "ml")
CV = ChannelRef("slack", "C123")


def test_migrations_apply_once_and_reopen_cleanly(tmp_path):
    path = tmp_path / "db.sqlite"
    first = Store(path)
    first.add_papers([paper("2410.00001")], T0)
    first.close()
    again = Store(path)
    assert [m.name for m in migrations.applied(again.db)] == [m.name for m in migrations._migrations]
    assert len(migrations._migrations) >= 3
    assert again.count_papers() == 1
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again.close()


@pytest.mark.backends
def test_add_papers_returns_only_new_ones_and_round_trips(store):
    p = paper("2410.00001", "Title", "Abstract", authors=("A", "B"), categories=("cs.LG",), upvotes=None)
    assert store.add_papers([p], T0) == [p]
    assert store.add_papers([p], T0 + timedelta(hours=1)) == []
    stored = store.get_paper("2410.00001")
    assert (stored.title, stored.authors, stored.categories, stored.source) == \
        ("Title", ("A", "B"), ("cs.LG",), "arxiv")
    assert store.get_paper("2410.99999") is None


@pytest.mark.backends
def test_a_later_hf_listing_enriches_an_arxiv_paper(store):
    store.add_papers([paper("2410.00001", "From arXiv", source="arxiv")], T0)
    hf = paper("2410.00001", "From HF", source="huggingface", upvotes=12, github="https://github.com/a/b",
               ai_summary="AI")
    assert store.add_papers([hf], T0) == []
    stored = store.get_paper("2410.00001")
    assert stored.title == "From arXiv"  # the first listing's text stays
    assert (stored.upvotes, stored.github, stored.ai_summary) == (12, "https://github.com/a/b", "AI")
    assert store.db.execute("SELECT sources FROM papers").fetchone()[0] == "arxiv,huggingface"
    store.add_papers([paper("2410.00001", source="huggingface", upvotes=30)], T0)
    assert store.get_paper("2410.00001").upvotes == 30  # upvotes are refreshed


def test_full_text_index_follows_the_papers_table(store):
    store.add_papers([paper("2410.00001", "Latent diffusion", "denoising"), paper("2410.00002", "Agents")], T0)
    rows = store.db.execute("SELECT rowid FROM papers_fts WHERE papers_fts MATCH 'diffusion'").fetchall()
    assert len(rows) == 1


@pytest.mark.backends
def test_subscriptions_are_idempotent_per_channel(store):
    first = store.add_subscription(ML, "diffusion", "u1", T0)
    s1 = first.subscription
    assert first.created and s1.id == 1 and s1.channel == ML and s1.created_at == T0
    again = store.add_subscription(ML, "diffusion", "u2", T0)
    assert again == Subscribed(s1, created=False)
    other = store.add_subscription(CV, "diffusion", "u2", T0)
    assert other.created and other.subscription.id == 2
    assert [s.query for s in store.subscriptions(ML)] == ["diffusion"]
    assert store.count_subscriptions(ML) == 1 and len(store.subscriptions()) == 2


@pytest.mark.backends
def test_a_channel_cannot_remove_another_channels_subscription(store):
    sub = store.add_subscription(ML, "diffusion", "u1", T0).subscription
    assert store.remove_subscription(CV, sub.id) is None
    assert store.remove_subscription(ML, sub.id).query == "diffusion"
    assert store.subscriptions(ML) == []
    # ids are never reused
    assert store.add_subscription(ML, "agents", "u1", T0).subscription.id == sub.id + 1


def _match(sub_id, channel, query):
    return Match(sub_id, channel, query, tuple(f"{w} in title" for w in query.split()))


@pytest.mark.backends
def test_one_delivery_per_paper_and_channel(store):
    stored(store, paper("2410.00001"))
    matches = [_match(1, ML, "diffusion"), _match(2, ML, "video"), _match(3, CV, "diffusion")]
    assert store.enqueue("2410.00001", matches, T0) == 2
    assert store.enqueue("2410.00001", matches, T0) == 0  # never twice
    due = due_now(store, T0)
    assert [(d.channel, d.matched) for d in due] == [(ML, tuple(matches[:2])), (CV, (matches[2],))]


@pytest.mark.backends
def test_why_a_delivery_matched_is_kept_as_facts_not_text(store):
    stored(store, paper("2410.00001"))
    matches = [Match(1, ML, "a `quoted` query; #2 `x`", ("a in title", "cat:cs.LG")), Match(2, ML, "b", ())]
    store.enqueue("2410.00001", matches, T0)
    (delivery,) = due_now(store, T0)
    assert delivery.matched == tuple(matches)
    ((facts,),) = sql(store, "SELECT matched FROM deliveries")  # JSON text on SQLite, jsonb on PostgreSQL
    facts = json.loads(facts) if isinstance(facts, str) else facts
    assert facts == [{"id": 1, "query": "a `quoted` query; #2 `x`", "terms": ["a in title", "cat:cs.LG"]},
                     {"id": 2, "query": "b", "terms": []}]  # facts: no wording, no markup


def test_reasons_stored_as_text_before_m012_are_read_back_as_facts(tmp_path):
    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m012_delivery_matched_facts")
    old.execute("""INSERT INTO papers (id, title, summary, authors, categories, sources, first_seen, updated_at)
                   VALUES ('2410.00001', 't', 's', '[]', '[]', 'arxiv', '2026-11-27', '2026-11-27')""")
    reasons = [
        "#1 `diffusion`: diffusion in title, cat:cs.LG; #2 `video`",
        "#3 `a `b` c`: a in title",  # a query holding backticks
        "#4 `q`: q in title; #5 `cut off at five hund",  # cut at 500 characters: the last one is lost
        "",
    ]
    for i, reason in enumerate(reasons):
        old.execute("""INSERT INTO deliveries (paper_id, channel, reason, next_attempt_at, created_at)
                       VALUES ('2410.00001', ?, ?, '2026-11-27', '2026-11-27')""", [f"console:c{i}", reason])
    old.close()
    store = Store(path)
    matched = {d.channel.channel_id: d.matched for d in due_now(store, T0)}
    ch = [ChannelRef("console", f"c{i}") for i in range(4)]
    assert matched == {
        "c0": (Match(1, ch[0], "diffusion", ("diffusion in title", "cat:cs.LG")), Match(2, ch[0], "video", ())),
        "c1": (Match(3, ch[1], "a `b` c", ("a in title",)),),
        "c2": (Match(4, ch[2], "q", ("q in title",)),),
        "c3": (),
    }
    # Cards read as they did when the text was stored.
    assert [why_matched(matched[f"c{i}"]) for i in range(2)] == reasons[:2]
    store.close()


@pytest.mark.backends
def test_delivery_lifecycle(store):
    stored(store, paper("2410.00001"))
    sub_id = subscribed(store, ML, "diffusion")
    store.enqueue("2410.00001", [_match(sub_id, ML, "diffusion")], T0)
    (delivery,) = due_now(store, T0)
    assert store.claim_delivery(delivery.id)
    assert not store.claim_delivery(delivery.id)  # claimed once only
    assert due_now(store, T0) == []
    store.reschedule_delivery(delivery.id, "HTTP 500", T0 + timedelta(minutes=1))
    assert due_now(store, T0) == []
    (retry,) = due_now(store, T0 + timedelta(minutes=1))
    assert retry.attempts == 1
    store.claim_delivery(retry.id)
    store.mark_sent(retry.id, "ts-1", T0)
    assert store.delivery_counts() == OutboxCounts(sent=1)
    assert store.subscriptions(ML)[0].delivered == 1


@pytest.mark.backends
def test_unfinished_sends_are_released_after_a_crash(store):
    stored(store, paper("2410.00001"))
    store.enqueue("2410.00001", [_match(1, ML, "x")], T0)
    (delivery,) = due_now(store, T0)
    store.claim_delivery(delivery.id, T0)
    (unfinished,) = store.unfinished_deliveries()
    assert unfinished.id == delivery.id and unfinished.claimed_at == T0 and unfinished.matched == delivery.matched
    store.release_delivery(delivery.id)
    assert len(due_now(store, T0)) == 1 and store.unfinished_deliveries() == []


@pytest.mark.backends
def test_crashes_mid_send_do_not_use_up_a_papers_attempts(store):
    # bench.faults found deliveries past MAX_ATTEMPTS after many kills mid-send: a kill is not
    # the paper's fault, so an interrupted attempt is given back when the delivery is released.
    stored(store, paper("2410.00001"))
    store.enqueue("2410.00001", [_match(1, ML, "x")], T0)
    for _ in range(20):
        (delivery,) = due_now(store, T0)
        store.claim_delivery(delivery.id, T0)
        store.release_delivery(delivery.id)
    (delivery,) = due_now(store, T0)
    assert delivery.attempts == 0


@pytest.mark.backends
def test_failed_for_good_is_not_due_again(store):
    stored(store, paper("2410.00001"))
    store.enqueue("2410.00001", [_match(1, ML, "x")], T0)
    (delivery,) = due_now(store, T0)
    store.give_up_delivery(delivery.id, "channel_not_found")
    assert due_now(store, T0 + timedelta(days=1)) == []
    assert store.delivery_counts() == OutboxCounts(failed=1)


@pytest.mark.backends
def test_source_state_counts_consecutive_failures(store):
    assert store.source_state("arxiv") is None
    assert store.record_source_failure("arxiv", T0, "HTTP 503") == 1
    assert store.record_source_failure("arxiv", T0, "HTTP 503") == 2
    store.record_source_success("arxiv", T0 + timedelta(minutes=5), 42)
    state = store.source_state("arxiv")
    assert state.consecutive_failures == 0 and state.last_count == 42
    assert state.last_error == "HTTP 503" and state.last_success == T0 + timedelta(minutes=5)
    assert state.next_poll is None and state.validators == Validators()


@pytest.mark.backends
def test_source_validators_are_a_value_stored_and_read_back(store):
    assert store.source_validators("huggingface") == Validators()
    store.save_source_validators("huggingface", Validators('"v1"', "Fri, 27 Nov 2026 10:00:00 GMT"))
    assert store.source_validators("huggingface") == Validators('"v1"', "Fri, 27 Nov 2026 10:00:00 GMT")
    assert store.source_state("huggingface").validators == Validators('"v1"', "Fri, 27 Nov 2026 10:00:00 GMT")
    store.save_source_validators("huggingface", Validators(etag='"v2"'))  # a response without Last-Modified
    assert store.source_validators("huggingface") == Validators('"v2"', None)


def test_papers_listed_as_hf_by_older_versions_are_renamed_huggingface(tmp_path):
    # The database of a version that called Hugging Face "hf" in papers.sources: its
    # schema is this one without m011 (which changes data only), so undo m011 to make one.
    path = tmp_path / "old.db"
    old = Store(path)
    old.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm011_one_name_for_hugging_face'")
    rows = [("2410.00001", "hf"), ("2410.00002", "arxiv,hf"), ("2410.00003", "arxiv"), ("2410.00004", "hf,arxiv")]
    for paper_id, sources in rows:
        old.add_papers([paper(paper_id, f"Paper {paper_id}")], T0)
        old.db.execute("UPDATE papers SET sources = ? WHERE id = ?", [sources, paper_id])
    old.db.conn.commit()
    old.close()
    store = Store(path)  # migrates
    stored = dict(store.db.execute("SELECT id, sources FROM papers").fetchall())
    assert stored == {"2410.00001": "huggingface", "2410.00002": "arxiv,huggingface", "2410.00003": "arxiv",
                      "2410.00004": "huggingface,arxiv"}
    assert store.get_paper("2410.00001").source == "huggingface"
    assert [p.id for p in store.search_papers(["paper"], 5)]  # the full-text index followed the update
    store.close()


def test_a_database_of_a_development_build_with_unmatched_papers_under_another_name_opens(tmp_path):
    # The poll's batches were developed with this step named m013_unmatched_papers: a
    # database made by that build has the table, and the step recorded under the old name.
    path = tmp_path / "dev.db"
    old = Store(path)
    old.db.execute("UPDATE _sqlite_migrations SET name = 'm013_unmatched_papers' WHERE name = 'm014_unmatched_papers'")
    old.add_papers([paper("2410.00001", "Diffusion")], T0)
    old.db.execute("INSERT INTO unmatched_papers (paper_id, since) VALUES ('2410.00001', ?)", [T0.isoformat()])
    old.db.conn.commit()
    old.close()
    store = Store(path)  # migrates
    assert [u.paper.id for u in store.unmatched_papers(10)] == ["2410.00001"]  # kept for the next poll
    store.close()


def test_subscriptions_to_source_hf_by_older_versions_say_huggingface(tmp_path):
    # Queries are stored normalized, and `source:hf` now normalizes to `source:huggingface`:
    # a query stored before the rename must read the same, or subscribing to it again makes
    # a second subscription instead of "already subscribed".
    path = tmp_path / "old.db"
    old = Store(path)
    old.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm013_subscriptions_say_huggingface'")
    queries = ["source:hf", "diffusion -source:hf", "(source:hf OR cat:cs.cl) video", '"source hf"', "hfx"]
    for query in queries:
        old.db.execute("INSERT INTO subscriptions (channel, query, created_by, created_at) VALUES (?, ?, 'u', ?)",
                       [ML.key, query, T0.isoformat()])
    for query in ("source:hf", "source:huggingface"):  # both, subscribed across the upgrade: left as they are
        old.db.execute("INSERT INTO subscriptions (channel, query, created_by, created_at) VALUES (?, ?, 'u', ?)",
                       [CV.key, query, T0.isoformat()])
    old.db.conn.commit()
    old.close()
    store = Store(path)  # migrates
    assert [s.query for s in store.subscriptions(ML)] == [normalize_query(q) for q in queries] == [
        "source:huggingface", "diffusion -source:huggingface", "(source:huggingface OR cat:cs.cl) video",
        '"source hf"', "hfx"]
    again = store.add_subscription(ML, normalize_query("source:hf"), "u", T0)
    assert not again.created and again.subscription.query == "source:huggingface"
    assert sorted(s.query for s in store.subscriptions(CV)) == ["source:hf", "source:huggingface"]
    store.close()


@pytest.mark.backends
def test_search_ranks_within_the_most_recent_matches(store):
    for i in range(1, 8):
        store.add_papers([paper(f"2410.0000{i}", f"Diffusion study {i}", "diffusion " * (8 - i))],
                         T0 + timedelta(minutes=i))
    everything = store.search_papers(["diffusion"], 3)
    assert [p.id for p in everything] == ["2410.00001", "2410.00002", "2410.00003"]  # most mentions rank first
    recent = store.search_papers(["diffusion"], 3, window=4)  # only the 4 newest are ranked
    assert [p.id for p in recent] == ["2410.00004", "2410.00005", "2410.00006"]
    assert store.search_papers(["diffusion", "nowhere"], 3)[0].id == "2410.00001"  # falls back to any word
    assert store.search_papers([], 3) == []


@pytest.mark.backends
def test_enqueue_many_queues_each_paper_once_per_channel_and_keeps_its_subscriptions(store):
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    stored(store, paper("2410.00001"), paper("2410.00002"))
    assert store.enqueue("2410.00001", [Match(1, a, "x", ())], t) == 1  # already owed to a: nothing new below
    created = store.enqueue_many([
        PaperMatches("2410.00001", (Match(1, a, "x", ()), Match(2, b, "y", ("y in title",)), Match(3, b, "z", ()))),
        PaperMatches("2410.00002", (Match(1, a, "x", ()),)),
    ], t)
    assert created == 2
    rows = store.db.execute("SELECT id, paper_id, channel FROM deliveries ORDER BY id").fetchall()
    assert [(r[1], r[2]) for r in rows] == [("2410.00001", a.key), ("2410.00001", b.key), ("2410.00002", a.key)]
    matched = {row[0]: [m.subscription_id for m in d.matched] for row in rows
               for d in store.pending_for_channel(ChannelRef.from_key(row[2])) if d.id == row[0]}
    assert matched == {rows[0][0]: [1], rows[1][0]: [2, 3], rows[2][0]: [1]}
    assert [m.terms for d in store.pending_for_channel(b) for m in d.matched] == [("y in title",), ()]
    assert store.enqueue_many([], t) == 0


@pytest.mark.backends
def test_queue_matched_queues_for_subscriptions_that_may_receive_each_paper_and_settles_the_batch(store):
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    subs = [store.add_subscription(channel, query, "u1", t - timedelta(days=2)).subscription
            for channel, query in ((b, "zeta"), (a, "alpha"), (b, "beta"), (a, "gamma"))]
    later = store.add_subscription(a, "delta", "u1", t + timedelta(hours=1)).subscription  # after both papers
    gone = store.add_subscription(b, "omega", "u1", t - timedelta(days=2)).subscription
    store.remove_subscription(b, gone.id)
    one, two, three = paper("2410.00001"), paper("2410.00002"), paper("2410.00003")
    store.add_papers([one, two, three], t)
    done = [UnmatchedPaper(one, t, subs[-1].id), UnmatchedPaper(two, t), UnmatchedPaper(three, t, subs[-1].id)]
    store.mark_unmatched(done)
    assert store.enqueue("2410.00002", [Match(subs[1].id, a, "alpha", ())], t) == 1  # owed already: nothing new
    m = {s.query: Match(s.id, s.channel, s.query, (f"{s.query} in title", "shared")) for s in [*subs, later, gone]}
    found = [
        # b's matches come in the order given (zeta's id is the lowest), between a's
        (m["gamma"], m["zeta"], m["alpha"], m["beta"], m["delta"], m["omega"]),
        (m["alpha"], m["beta"], m["delta"]),  # re-checked (no upto): delta was created after `since`
        (),  # nothing matched: settled all the same
    ]
    batch = MatchedBatch.encode(done, found)
    assert batch.rows == 9 and batch.paper_ids == {"2410.00001", "2410.00002", "2410.00003"}
    assert batch.settles
    # A channel's several matches of a paper are one delivery (a list of them), where it first matched
    deliveries = [[isinstance(d[0], list) for d in entry[1:]] for entry in json.loads(batch.matches)]
    assert deliveries == [[True, True], [True, False]]  # one: a's three, b's three; two: a's two, b's beta
    assert store.queue_matched(batch, t) == 3  # one: a and b; two: b (a had it)
    assert store.unmatched_papers(10) == []
    rows = store.db.execute("SELECT paper_id, channel, strength FROM deliveries ORDER BY paper_id, channel").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("2410.00001", a.key), ("2410.00001", b.key),
                                            ("2410.00002", a.key), ("2410.00002", b.key)]
    owed = {(d.paper_id, d.channel): d.matched for channel in (a, b) for d in store.pending_for_channel(channel)}
    assert owed[("2410.00001", a)] == (m["gamma"], m["alpha"])  # delta: committed after the paper's upto
    assert owed[("2410.00001", b)] == (m["zeta"], m["beta"])  # omega: removed
    assert owed[("2410.00002", b)] == (m["beta"],)
    strengths = [match_strength([m["zeta"], m["beta"]]), match_strength([m["beta"]])]
    assert [r[2] for r in rows if r[1] == b.key] == strengths
    assert rows[0][2] == 2003
    assert {(d.channel, d.due) for d in store.due_channels(t)} == {(a, 2), (b, 2)}  # due at `now`
    assert store.due_channels(t - timedelta(seconds=1)) == []
    again = MatchedBatch.encode([UnmatchedPaper(one, t, later.id)], [(m["delta"], m["alpha"])])
    assert store.queue_matched(again, t) == 0  # each paper once a channel, ever


@pytest.mark.backends
def test_queue_matched_keeps_the_facts_as_given_and_queues_in_the_batch_order(store):
    # Quotes, placeholders, a backslash, a NUL (U+FFFD in its place on PostgreSQL, which refuses
    # it; SQLite's JSON cuts the text at it).
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    sa = store.add_subscription(a, "alpha", "u1", t - timedelta(days=1)).subscription
    sb = store.add_subscription(b, "beta", "u1", t - timedelta(days=1)).subscription
    one, two = paper("2410.00001"), paper("2410.00002")
    store.add_papers([one, two], t)
    odd = "a 'quoted' \"query\"; %s %(y)s \\ é"
    found = [(Match(sb.id, b, "beta", ()), Match(sa.id, a, odd, ("x\x00y in title", "x\x00y"))),
             (Match(sa.id, a, "alpha", ("alpha",)),)]
    batch = MatchedBatch.encode([UnmatchedPaper(one, t, sb.id), UnmatchedPaper(two, t, sb.id)], found)
    assert store.queue_matched(batch, t) == 3
    rows = store.db.execute("SELECT paper_id, channel, strength FROM deliveries ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["2410.00001", "2410.00001", "2410.00002"]  # the papers' order
    strengths = {(r[0], r[1]): r[2] for r in rows}
    assert strengths[("2410.00001", b.key)] == 0 and strengths[("2410.00002", a.key)] == 1
    assert strengths[("2410.00001", a.key)] in (1002, 1)  # 1: SQLite's JSON cut both terms to "x"
    (fact,) = [m for d in store.pending_for_channel(a) if d.paper_id == "2410.00001" for m in d.matched]
    assert fact.subscription_id == sa.id and fact.query == odd
    assert [term[:1] for term in fact.terms] == ["x", "x"] and fact.terms[0].endswith(" in title")


@pytest.mark.backends
def test_queue_matched_split_by_ranges_of_channels_queues_the_same_and_settles_with_the_last(store):
    # A poll's group of papers goes in several short transactions, each for a range of channel
    # keys (so that each rewrites a slice of the outbox's index by channel); its papers stay
    # written down as unmatched until the last one commits, so a crash in between loses nothing.
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    channels = [ChannelRef("console", name) for name in ("d", "b", "c", "a")]
    subs = [store.add_subscription(c, f"q{c.channel_id}", "u1", t - timedelta(days=1)).subscription for c in channels]
    papers = [paper(f"2410.0000{i}") for i in range(1, 4)]
    store.add_papers(papers, t)
    done = [UnmatchedPaper(p, t, subs[-1].id) for p in papers]
    store.mark_unmatched(done)
    m = [Match(s.id, s.channel, s.query, ("x in title", f"t{s.id}")) for s in subs]
    found = [tuple(m), (m[2], m[0]), ()]
    batches = MatchedBatch.split(done, found, 2)
    assert [b.rows for b in batches] == [2, 2, 2]  # a: 1, b: 1 | c: 2 | d: 2
    subscriptions = [[d[0] for entry in json.loads(b.matches) for d in entry[1:]] for b in batches]
    assert subscriptions == [[subs[1].id, subs[3].id], [subs[2].id, subs[2].id], [subs[0].id, subs[0].id]]
    assert [b.settles for b in batches] == [False, False, True]
    assert [[entry[0] for entry in json.loads(b.matches)] for b in batches] == [[0], [0, 1], [0, 1]]  # by paper
    assert all(b.paper_ids == {p.id for p in papers} for b in batches)
    assert sum(store.queue_matched(b, t) for b in batches[:2]) == 4
    assert [u.paper.id for u in store.unmatched_papers(10)] == [p.id for p in papers]  # not yet
    assert store.queue_matched(batches[0], t) == 0  # again (a crash, the next poll): nothing twice
    assert store.queue_matched(batches[2], t) == 2 and store.unmatched_papers(10) == []
    rows = store.db.execute("SELECT paper_id, channel, strength FROM deliveries ORDER BY channel, id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("2410.00001", "console:a"), ("2410.00001", "console:b"), ("2410.00001", "console:c"),
        ("2410.00002", "console:c"), ("2410.00001", "console:d"), ("2410.00002", "console:d")]
    assert {r[2] for r in rows} == {1002}
    owed = {(d.paper_id, d.channel.channel_id): d.matched for c in channels for d in store.pending_for_channel(c)}
    assert owed[("2410.00002", "c")] == (m[2],) and owed[("2410.00001", "a")] == (m[3],)
    (alone,) = MatchedBatch.split(done, [(), (), ()], 2)  # nothing matched: one transaction, settling all
    assert alone.rows == 0 and alone.settles


@pytest.mark.backends
def test_queue_matched_groups_a_channel_s_matches_whatever_their_place_in_the_split(store):
    # A channel's matches of a paper are one delivery: several go as a list (grouped in SQL, the
    # strength counted over their distinct terms), a match alone as it is (its strength counted in
    # its JSON text): same rows.
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    sa, sa2, sb = (store.add_subscription(c, q, "u1", t - timedelta(days=1)).subscription
                   for c, q in ((a, "alpha"), (a, "beta"), (b, "gamma")))
    one, two = paper("2410.00001"), paper("2410.00002")
    store.add_papers([one, two], t)
    done = [UnmatchedPaper(one, t, sb.id), UnmatchedPaper(two, t, sb.id)]
    ma, ma2, mb = (Match(s.id, s.channel, s.query, (f"{s.query} in title", "x")) for s in (sa, sa2, sb))
    batch = MatchedBatch.encode(done, [(mb, ma2, ma), (ma, mb)])
    assert json.loads(batch.matches) == [
        [0, [sb.id, "gamma", list(mb.terms)],
         [[sa2.id, "beta", ["beta in title", "x"]], [sa.id, "alpha", list(ma.terms)]]],
        [1, [sa.id, "alpha", list(ma.terms)], [sb.id, "gamma", list(mb.terms)]]]
    assert store.queue_matched(batch, t) == 4
    owed = {(d.paper_id, d.channel.channel_id): d.matched for c in (a, b) for d in store.pending_for_channel(c)}
    assert owed == {("2410.00001", "a"): (ma2, ma), ("2410.00001", "b"): (mb,), ("2410.00002", "a"): (ma,),
                    ("2410.00002", "b"): (mb,)}
    strengths = dict(store.db.execute("SELECT paper_id || channel, strength FROM deliveries").fetchall())
    assert strengths == {"2410.00001console:a": match_strength([ma2, ma]), "2410.00001console:b": 1002,
                         "2410.00002console:a": 1002, "2410.00002console:b": 1002}
    # A single's strength is counted in SQL without DISTINCT: a match whose terms repeat goes
    # with the grouped ones; a quote in a term is no " in title" of its own.
    three, four = paper("2410.00003"), paper("2410.00004")
    store.add_papers([three, four], t)
    odd = Match(sa.id, a, "alpha", ('say "x" in title', 'say "x" in title', "y in title\\"))
    quoted = Match(sb.id, b, "gamma", ('a " in title', 'b in title" x', "c in title"))
    batch = MatchedBatch.encode([UnmatchedPaper(three, t, sb.id), UnmatchedPaper(four, t, sb.id)], [(odd,), (quoted,)])
    # three's terms repeat: a delivery of one match in a list, counted as the grouped ones are
    assert json.loads(batch.matches) == [[0, [[sa.id, "alpha", list(odd.terms)]]],
                                         [1, [sb.id, "gamma", list(quoted.terms)]]]
    assert store.queue_matched(batch, t) == 2
    strengths = dict(store.db.execute("SELECT paper_id, strength FROM deliveries WHERE paper_id IN "
                                      "('2410.00003', '2410.00004')").fetchall())
    assert strengths == {"2410.00003": 1002, "2410.00004": 2003}
    assert (match_strength([odd]), match_strength([quoted])) == (1002, 2003)
    # A query ending with " in title" is no term; "],[" or '",[' in a term is text; a NUL in a
    # delivery of several (U+FFFD on PostgreSQL).
    five, six = paper("2410.00005"), paper("2410.00006")
    store.add_papers([five, six], t)
    titled = Match(sb.id, b, "gamma in title", ('q",[ in title', "],[x in title", "y"))
    nul = (Match(sa.id, a, "alpha in title", ("a\x00 in title",)), Match(sa2.id, a, "beta", ("a\x00 in title", "b")))
    batch = MatchedBatch.encode([UnmatchedPaper(five, t, sb.id), UnmatchedPaper(six, t, sb.id)], [(titled,), nul])
    assert store.queue_matched(batch, t) == 2
    strengths = dict(store.db.execute("SELECT paper_id, strength FROM deliveries WHERE paper_id IN "
                                      "('2410.00005', '2410.00006')").fetchall())
    assert strengths["2410.00005"] == match_strength([titled]) == 2003
    assert strengths["2410.00006"] in (match_strength(list(nul)), 2)  # 2: SQLite's substr stops at the NUL
    owed = {d.paper_id: d.matched for c in (a, b) for d in store.pending_for_channel(c)}
    assert owed["2410.00005"] == (titled,)
    assert [(m.subscription_id, m.query, len(m.terms)) for m in owed["2410.00006"]] == [(sa.id, "alpha in title", 1),
                                                                                        (sa2.id, "beta", 2)]


@pytest.mark.backends
def test_queue_matched_leaves_out_the_facts_of_a_subscription_removed_after_the_match(store):
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    sa, sa2, sb = (store.add_subscription(c, q, "u1", t - timedelta(days=1)).subscription
                   for c, q in ((a, "alpha"), (a, "beta"), (b, "gamma")))
    one = paper("2410.00001")
    store.add_papers([one], t)
    done = [UnmatchedPaper(one, t, sb.id)]
    store.mark_unmatched(done)
    found = [(Match(sa.id, a, "alpha", ("alpha in title", "alpha")), Match(sa2.id, a, "beta", ("beta",)),
              Match(sb.id, b, "gamma", ("gamma",)))]
    batch = MatchedBatch.encode(done, found)  # matched, then two subscriptions go before the write
    store.remove_subscription(a, sa.id)
    store.remove_subscription(b, sb.id)
    assert store.queue_matched(batch, t) == 1 and store.unmatched_papers(10) == []
    (delivery,) = store.pending_for_channel(a)
    assert delivery.matched == (Match(sa2.id, a, "beta", ("beta",)),)
    assert store.db.execute("SELECT strength FROM deliveries").fetchall() == [(1,)]  # out of what is left
    assert store.pending_for_channel(b) == []


def _queued_rows(store) -> list[tuple]:
    return sql(store, "SELECT paper_id, channel, matched, strength, next_attempt_at, created_at, status "
                      "FROM deliveries ORDER BY id")


def _spied(batches: list[MatchedBatch], asked: list[int]) -> list[MatchedBatch]:
    """The batches, noting in `asked` each time a store reads one's `matches`."""
    def spy(batch: MatchedBatch) -> Callable[[], str]:
        def encoded() -> str:
            asked.append(1)
            return batch.matches
        return encoded
    return [dataclasses.replace(b, encoded=spy(b)) for b in batches]


@pytest.mark.backends
def test_queue_matched_inserts_the_deliveries_made_at_an_unchanged_version_as_its_sql_makes_them(store):
    # A batch made at the newest subscription version holds its deliveries as the store writes
    # them (SQLite inserts them as they are, without reading `matches`); the same rows, in the
    # same order, as the store's SQL makes out of `matches`: non-ASCII, escapes, control
    # characters, a query ending with " in title", repeated terms, a channel's several matches
    # of which some are past the paper's upto, a re-checked paper (no upto: its subscriptions'
    # creation times decide, in SQL), a NUL (SQL's rows too), nothing matched.
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b, c = ChannelRef("console", "a"), ChannelRef("slack", "C1"), ChannelRef("console", "c")
    made = [(ch, q, t - timedelta(days=1)) for ch, q in ((a, "alpha"), (a, "beta é"), (b, "gamma in title"),
                                                        (c, 'q "x" \\ y'), (b, "delta"))]
    subs = [store.add_subscription(ch, q, "u1", when).subscription for ch, q, when in made]
    late = store.add_subscription(a, "late", "u1", t + timedelta(hours=1)).subscription  # after the papers
    papers = [paper(f"2410.0000{i}") for i in range(1, 8)]
    store.add_papers(papers, t)
    upto = subs[-1].id
    done = [UnmatchedPaper(p, t, upto) for p in papers]
    done[4] = UnmatchedPaper(papers[4], t)  # re-checked: subscriptions created by t
    store.mark_unmatched(done)
    sa, sa2, sb, sc, sd = subs

    def m(sub, *terms):
        return Match(sub.id, sub.channel, sub.query, tuple(terms))
    found = [
        (m(sa, "alpha in title", "élan \u00e9 ☃ 😀"), m(sb, "gamma in title", 'a " in title'),
         m(sc, "tab\tnew\nline\x01 in title", "x")),
        (m(sa, "alpha"), m(late, "late in title"), m(sa2, "beta é in title", "alpha"), m(sb, "gamma"),
         m(sd, "delta"), m(sa, "again")),  # a: alpha, beta and alpha again; late: past upto
        (m(sc, "q in title", "q in title", "y"),),  # repeated terms
        (m(late, "late"), m(sa, "alpha", "],[", '",[ in title')),
        (m(sa, "alpha"), m(late, "late"), m(sb, "gamma")),  # re-checked: late was created after t
        (m(sb, "nul\x00 in title"), m(sd, "delta")),
        (),
    ]
    version = store.subscriptions_version()

    def made_and_sql(done: list[UnmatchedPaper], found: list[tuple[Match, ...]], rows: int) -> list[tuple]:
        """The rows queued from batches made at the version, and the same from the SQL's way."""
        asked: list[int] = []
        fast = _spied(MatchedBatch.split(done, found, rows, version), asked)
        slow = MatchedBatch.split(done, found, rows)
        assert len(fast) == len(slow) > 1 and [f.rows for f in fast] == [s.rows for s in slow]
        queued = sum(store.queue_matched(batch, t) for batch in fast)
        made = _queued_rows(store)
        assert queued == len(made) and not {u.paper.id for u in store.unmatched_papers(10)} & {u.paper.id for u in done}
        assert bool(asked) == (not store.takes_made_deliveries())  # SQLite: the deliveries as made, not `matches`
        sql(store, "DELETE FROM deliveries")
        store.mark_unmatched(done)
        assert sum(store.queue_matched(batch, t) for batch in slow) == queued
        assert _queued_rows(store) == made
        sql(store, "DELETE FROM deliveries")
        store.mark_unmatched(done)
        return made

    # Papers with an upto and no NUL alone: the transactions before the last are one INSERT each.
    assert len(made_and_sql([done[i] for i in (0, 1, 2, 3)], [found[i] for i in (0, 1, 2, 3)], 1)) == 7
    rows = made_and_sql(done, found, 3)
    assert len(rows) == 10
    assert sum(store.queue_matched(batch, t) for batch in MatchedBatch.split(done, found, 3, version)) == 10
    owed = {(d.paper_id, d.channel): d.matched for ch in (a, b, c) for d in store.pending_for_channel(ch)}
    assert owed[(papers[1].id, a)] == (m(sa, "alpha"), m(sa2, "beta é in title", "alpha"), m(sa, "again"))
    assert (papers[4].id, a) in owed and late.id not in {x.subscription_id for ms in owed.values() for x in ms}


@pytest.mark.backends
def test_made_deliveries_are_the_sqls_for_many_kinds_of_terms(store):
    # Seeded random matches over terms that each take a path of their own in the worker's
    # rows (MatchedBatch.split, bot/models.py `_deliveries`): none, one, two and more terms,
    # a term twice, terms and queries ending with " in title", quotes, backslashes, control
    # characters and non-ASCII in either, a channel matched several times by a paper, matches
    # past the paper's upto; the rows queued the made way and the SQL's way are the same.
    rng = random.Random(11)
    t = T0
    words = ["alpha in title", "beta in abstract", "gamma", 'q"x in title', "back\\slash in title", "tab\tx",
             "\u001e in title", "é in title", "☃", "😀 in abstract", "in title", " in title", "x in title\\",
             "listed on arXiv"]
    queries = ["alpha", "beta in title", 'say "hi"', "é in title", "a\\b", "ctl\x1f", "plain in title\\"]
    channels = [ChannelRef("console", f"c{i}") for i in range(5)]
    subs = [store.add_subscription(channels[i % 5], f"{queries[i % len(queries)]} {i}" if i % 3 else
                                   queries[i % len(queries)], "u1", t - timedelta(days=1)).subscription
            for i in range(20)]
    late = [store.add_subscription(channels[i], f"late {i}", "u1", t).subscription for i in range(2)]
    papers = [paper(f"2410.{i:05d}") for i in range(1, 13)]
    store.add_papers(papers, t)
    done = [UnmatchedPaper(p, t, subs[-1].id) for p in papers]
    store.mark_unmatched(done)
    found = []
    for _ in papers:
        picked = rng.sample([*subs, *late], rng.randint(0, 12))
        found.append(tuple(Match(sub.id, sub.channel, sub.query,
                                 tuple(rng.choice(words) for _ in range(rng.choice([0, 1, 1, 2, 2, 2, 3, 4]))))
                           for sub in picked))
    assert any(len({m.channel for m in f}) < len(f) for f in found)  # a channel matched twice
    assert any(len(set(m.terms)) < len(m.terms) for f in found for m in f)  # a term twice
    version = store.subscriptions_version()
    for rows in (0, 7):
        queued = sum(store.queue_matched(batch, t) for batch in MatchedBatch.split(done, found, rows, version))
        made = _queued_rows(store)
        assert queued == len(made) > 20
        sql(store, "DELETE FROM deliveries")
        store.mark_unmatched(done)
        assert sum(store.queue_matched(batch, t) for batch in MatchedBatch.split(done, found, rows)) == queued
        assert _queued_rows(store) == made
        sql(store, "DELETE FROM deliveries")
        store.mark_unmatched(done)


@pytest.mark.backends
def test_made_deliveries_in_statements_of_every_size_keep_their_order(store):
    # Thousands of deliveries in one transaction: SQLite inserts the made ones by statements
    # of up to 4,096 rows (`_insert_made`: bound values, the rows past a batch's own NULLs),
    # the time and the version bound first. The same rows in the same order as the SQL's way
    # (a row bound out of place, or a statement that read its VALUES out of order, differs),
    # for batches of each statement size.
    t = T0
    channels = [ChannelRef("console", f"c{i:02d}") for i in range(40)]
    subs = [store.add_subscription(ch, f"q{i}", "u1", t - timedelta(days=1)).subscription
            for i, ch in enumerate(channels)]
    papers = [paper(f"2410.{i:05d}") for i in range(1, 241)]
    store.add_papers(papers, t)
    rng = random.Random(5)
    done = [UnmatchedPaper(p, t, subs[-1].id) for p in papers]
    found = [tuple(Match(sub.id, sub.channel, sub.query, (f"w{rng.randint(0, 9)} in title",))
                   for sub in rng.sample(subs, rng.randint(0 if i % 9 else 5, 40))) for i, _ in enumerate(papers)]
    version = store.subscriptions_version()
    total = sum(map(len, found))
    assert total > 4096  # more than one statement of the largest size
    for rows in (0, 100, 700, 3000):
        store.mark_unmatched(done)
        asked: list[int] = []
        made_batches = _spied(MatchedBatch.split(done, found, rows, version), asked)
        assert sum(store.queue_matched(batch, t) for batch in made_batches) == total
        assert bool(asked) == (not store.takes_made_deliveries())  # SQLite: inserted as made, `matches` unread
        made = _queued_rows(store)
        sql(store, "DELETE FROM deliveries")
        store.mark_unmatched(done)
        assert sum(store.queue_matched(batch, t) for batch in MatchedBatch.split(done, found, rows)) == total
        assert _queued_rows(store) == made
        assert [r[4] for r in made] == [r[5] for r in made] == [made[0][4]] * total  # the time, bound once
        sql(store, "DELETE FROM deliveries")


@pytest.mark.backends
def test_a_channels_several_matches_go_where_its_first_is_even_past_upto(store):
    # A paper matched a channel twice, first by a subscription created after the paper was
    # stored (past its upto), and another channel in between: the channel's delivery is
    # queued where its first match is, as the SQL queues it (the made rows had it after the
    # other channel's).
    t = T0
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    sa, sb = (store.add_subscription(c, q, "u1", t - timedelta(days=1)).subscription for c, q in ((a, "qa"), (b, "qb")))
    late = store.add_subscription(a, "late", "u1", t).subscription
    one = paper("2410.00001")
    store.add_papers([one], t)
    done = [UnmatchedPaper(one, t, sb.id)]
    found = [(Match(late.id, a, "late", ("l",)), Match(sb.id, b, "qb", ("x",)), Match(sa.id, a, "qa", ("y",)))]
    version = store.subscriptions_version()
    for made in (version, None):
        store.mark_unmatched(done)
        assert sum(store.queue_matched(batch, t) for batch in MatchedBatch.split(done, found, 0, made)) == 2
        queued = sql(store, "SELECT channel, matched FROM deliveries ORDER BY id")
        assert [(c, m if isinstance(m, list) else json.loads(m)) for c, m in queued] == [
            ("console:a", [{"id": sa.id, "query": "qa", "terms": ["y"]}]),
            ("console:b", [{"id": sb.id, "query": "qb", "terms": ["x"]}])]
        sql(store, "DELETE FROM deliveries")


@pytest.mark.backends
def test_queue_matched_reads_the_subscriptions_again_when_the_version_changed(store):
    # Made at a version, then a subscription is removed (or added, or changed) before the
    # write: the store reads the batch's `matches` and the subscriptions, as for any batch.
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    sa, sa2, sb = (store.add_subscription(ch, q, "u1", t - timedelta(days=1)).subscription
                   for ch, q in ((a, "alpha"), (a, "beta"), (b, "gamma")))
    one, two = paper("2410.00001"), paper("2410.00002")
    store.add_papers([one, two], t)
    done = [UnmatchedPaper(one, t, sb.id)]
    store.mark_unmatched(done)
    found = [(Match(sa.id, a, "alpha", ("alpha",)), Match(sa2.id, a, "beta", ("beta",)),
              Match(sb.id, b, "gamma", ("gamma",)))]
    batch = MatchedBatch.encode(done, found, store.subscriptions_version())
    store.remove_subscription(a, sa.id)
    store.remove_subscription(b, sb.id)
    assert store.queue_matched(batch, t) == 1 and store.unmatched_papers(10) == []
    (delivery,) = store.pending_for_channel(a)
    assert delivery.matched == (Match(sa2.id, a, "beta", ("beta",)),)
    assert store.pending_for_channel(b) == []
    # A subscription added since: nothing of the batch is lost for it.
    done = [UnmatchedPaper(two, t, sb.id)]
    store.mark_unmatched(done)
    batch = MatchedBatch.encode(done, [(Match(sa2.id, a, "beta", ("beta",)),)], store.subscriptions_version())
    store.add_subscription(b, "new", "u1", t)
    assert store.queue_matched(batch, t) == 1 and store.unmatched_papers(10) == []


@pytest.mark.backends
def test_unmatched_papers_are_kept_in_order_until_settled(store):
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    papers = [paper("2410.00002", "Two"), paper("2410.00001", "One")]
    store.add_papers(papers, t)
    store.mark_unmatched([UnmatchedPaper(papers[0], t), UnmatchedPaper(papers[1], t - timedelta(days=1))])
    store.mark_unmatched([UnmatchedPaper(papers[0], t + timedelta(days=1))])  # already down: keeps its first since
    found = store.unmatched_papers(10)
    assert [(u.paper.id, u.paper.title, u.since) for u in found] == [
        ("2410.00002", "Two", t), ("2410.00001", "One", t - timedelta(days=1))]
    assert [u.paper.id for u in store.unmatched_papers(1)] == ["2410.00002"]
    assert [u.paper.id for u in store.unmatched_papers(1, skip={"2410.00002"})] == ["2410.00001"]
    store.settle_unmatched(["2410.00002", "2410.99999"])
    assert [u.paper.id for u in store.unmatched_papers(10)] == ["2410.00001"]


def test_m020_upgrades_a_database_with_deliveries_and_unmatched_papers(tmp_path):
    # Before m020: which subscriptions a delivery answered was a delivery_matches row each, a
    # subscription's "posted" count was counted from them, and the newest subscription's
    # version was the one to beat. After: the counts are kept, the links are read from the
    # deliveries' facts, a leftover of an interrupted poll keeps its rule, and so on.
    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m020_poll_write_path")
    old.execute("""INSERT INTO papers (id, title, summary, authors, categories, sources, first_seen, updated_at)
                   VALUES ('2410.00001', 't', 's', '[]', '[]', 'arxiv', '2026-11-27', '2026-11-27')""")
    for sub_id, query in ((1, "diffusion"), (2, "video"), (3, "agents")):
        old.execute("""INSERT INTO subscriptions (id, channel, query, created_by, created_at, version)
                       VALUES (?, 'console:ml', ?, 'u1', '2026-11-26T00:00:00+00:00', ?)""", [sub_id, query, sub_id])
    facts = json.dumps([{"id": 1, "query": "diffusion", "terms": []}, {"id": 2, "query": "video", "terms": []}])
    for channel, status in (("console:ml", "sent"), ("console:cv", "pending")):
        old.execute("""INSERT INTO deliveries (paper_id, channel, matched, status, next_attempt_at, created_at)
                       VALUES ('2410.00001', ?, ?, ?, '2026-11-27', '2026-11-27')""", [channel, facts, status])
        delivery_id = old.execute("SELECT max(id) FROM deliveries").fetchone()[0]
        old.execute("INSERT INTO delivery_matches VALUES (?, 1), (?, 2)", [delivery_id, delivery_id])
    old.execute("INSERT INTO unmatched_papers (paper_id, since) VALUES ('2410.00001', '2026-11-27T12:00:00+00:00')")
    old.execute("DELETE FROM subscriptions WHERE id = 3")  # the newest: its version 3 must not be given again
    old.close()

    store = Store(path)
    assert [(s.id, s.delivered) for s in store.subscriptions(ML)] == [(1, 1), (2, 1)]
    assert "delivery_matches" not in store.db.table_names()
    (pending,) = store.pending_for_channel(ChannelRef("console", "cv"))
    assert [ref.id for ref in store.delivery_subscriptions(pending.id)] == [1, 2]
    assert store.claim_delivery(pending.id)
    store.mark_sent(pending.id, "m1", T0)
    assert [(s.id, s.delivered) for s in store.subscriptions(ML)] == [(1, 2), (2, 2)]  # counted when sent
    (left,) = store.unmatched_papers(10)
    assert left.upto is None and left.since == datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    new = store.add_subscription(ML, "robots", "u1", T0).subscription
    assert new is not None and store.subscriptions_changed_since(3).subscriptions == [new]
    index = store.db.execute("SELECT sql FROM sqlite_master WHERE name = 'deliveries_channel_message'").fetchone()[0]
    assert index.endswith("WHERE message_id IS NOT NULL")  # a new delivery (no message yet) stays out of it
    store.close()
    again = Store(path)  # opening again applies nothing twice
    assert [(s.id, s.delivered) for s in again.subscriptions(ML)] == [(1, 2), (2, 2), (new.id, 0)]
    again.close()


def test_the_write_turnstile_serves_the_loop_first_then_the_others_in_order():
    # The poller's writer commits one transaction after another: with a plain lock it took the
    # lock again before a waiting command on the loop woke up, again and again.
    import threading
    import time

    from storage.db import Turnstile

    turnstile = Turnstile()
    assert turnstile.acquire() and turnstile.acquire()  # reentrant
    turnstile.release()
    order: list[str] = []

    def waiter(name: str, background: bool) -> threading.Thread:
        def run() -> None:
            assert turnstile.acquire(60, background=background)
            order.append(name)
            turnstile.release()

        queued = sum(map(len, turnstile._queues))
        thread = threading.Thread(target=run)
        thread.start()
        while sum(map(len, turnstile._queues)) == queued:  # it is waiting: the next one comes after it
            time.sleep(0.001)
        return thread

    threads = [waiter("writer 1", True), waiter("writer 2", True), waiter("loop 1", False), waiter("loop 2", False)]
    gave_up: list[bool] = []
    quitter = threading.Thread(target=lambda: gave_up.append(turnstile.acquire(0.01)))
    quitter.start()
    quitter.join()
    turnstile.release()
    for thread in threads:
        thread.join()
    assert gave_up == [False]  # timed out, and held up no one
    assert order == ["loop 1", "loop 2", "writer 1", "writer 2"]
    assert turnstile.acquire(0) and order  # free again
    turnstile.release()


def test_m028_the_full_text_index_is_rewritten_only_when_a_papers_text_changes(tmp_path):
    # Before m028, every UPDATE of a paper (a later listing's upvotes, sources, links) deleted
    # and re-added its words in papers_fts. A database made before it, with papers in it:
    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m028_papers_fts_on_text_updates")
    old.execute("""INSERT INTO papers (id, title, summary, authors, categories, sources, first_seen, updated_at)
                   VALUES ('2410.00001', 'Diffusion models', 'We denoise.', '["Ada Lovelace"]', '[]', 'arxiv',
                           '2026-11-27', '2026-11-27')""")
    old.close()

    store = Store(path)

    def index() -> list:
        return store.db.execute("SELECT id, block FROM papers_fts_data ORDER BY id").fetchall()

    before = index()
    store.add_papers([paper("2410.00001", "Diffusion models", "We denoise.", source="huggingface", upvotes=7,
                            github="https://github.com/acme/x")], T0)
    assert store.get_paper("2410.00001").upvotes == 7
    assert index() == before  # refreshed, not re-indexed
    assert [p.id for p in store.search_papers(["lovelace"], 5)] == ["2410.00001"]
    with store.transaction():  # were the text ever to change, the index follows it
        store.db.execute("UPDATE papers SET title = 'Robot arms' WHERE id = '2410.00001'")
    assert [p.id for p in store.search_papers(["robot"], 5)] == ["2410.00001"]
    assert store.search_papers(["diffusion"], 5) == []
    store.close()
