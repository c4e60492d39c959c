"""Bursts give their cards to the best papers, and digests list them best first: upvotes
(unknown last), then how strongly the queries matched (terms in the title, terms matched),
then the newest paper. Through the Dispatcher and the real SQLite store."""

from datetime import datetime, timedelta, timezone

from bot.cards import RANK_ORDER
from bot.dispatch import DIGEST_MAX, Dispatcher
from bot.models import ChannelRef, ChannelSettings, Match, OutboxCounts, PostResult
from storage import Store

from .fakes import paper
from .test_dispatch_fairness import CARDS, Recorder

ML = ChannelRef("console", "ml")
DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)


def queue(store, clock, papers, terms=("diffusion in title",), query="diffusion"):
    store.add_papers(papers, clock())
    for p in papers:
        store.enqueue(p.id, [Match(1, ML, query, tuple(terms))], clock())


async def test_the_most_upvoted_papers_get_the_cards_and_the_digest_follows_in_order(store, clock):
    # The channel: 28 matches, the 118, 103 and 74 upvote papers listed late.
    votes = [0, 3, None, 13, 5, 1, 2, 7, 0, None, 9, 4, 6, 8, 11, 12, 10, 0, 2, 1, 3, None, 5, 6, 118, 103, 74, 20]
    queue(store, clock, [paper(f"2411.{n:05d}", f"Paper {n}", upvotes=v) for n, v in enumerate(votes)])
    adapter = Recorder()
    await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch()
    ranked = sorted(range(len(votes)), key=lambda n: (votes[n] is None, -(votes[n] or 0), n))
    assert [c.title for c in adapter.cards_to(ML)] == [f"Paper {n}" for n in ranked[:CARDS]]
    assert [c.upvotes for c in adapter.cards_to(ML)][:4] == [118, 103, 74, 20]
    (digest,) = adapter.digests
    assert [c.title for c in digest.cards] == [f"Paper {n}" for n in ranked[CARDS:]]
    assert [c.upvotes for c in digest.cards][-3:] == [None, None, None]  # unknown upvotes last
    assert digest.order == RANK_ORDER and digest.order.startswith("Most upvoted first")


async def test_then_the_strongest_match_then_the_newest(store, clock):
    store.add_papers([paper(f"2411.{n:05d}", f"Paper {n}", upvotes=5, published=DAY + timedelta(hours=n))
                      for n in range(14)], clock())
    strengths = {  # paper -> terms matched
        0: ("diffusion in abstract",),
        1: ("diffusion in title", "video in title"),  # two title hits: first
        2: ("diffusion in title",),
        3: ("diffusion in abstract", "video in abstract", "3d in abstract"),  # three terms, none in the title
        4: ("diffusion in title", "video in abstract"),  # one title hit, two terms
    }
    for n in range(14):
        store.enqueue(f"2411.{n:05d}", [Match(1, ML, "q", strengths.get(n, ("diffusion in abstract",)))], clock())
    ranked = [d.paper_id for d in store.pending_for_channel(ML)]
    store.db.execute("UPDATE deliveries SET strength = NULL")  # rows queued before m017: read from `matched`
    assert [d.paper_id for d in store.pending_for_channel(ML)] == ranked
    adapter = Recorder()
    await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch()
    order = [c.title for c in adapter.cards_to(ML)] + [c.title for c in adapter.digests[0].cards]
    # Title hits, then terms; among equals (one abstract term each) the newest paper first.
    rest = [n for n in range(13, -1, -1) if n not in (1, 4, 2, 3)]
    assert order == [f"Paper {n}" for n in [1, 4, 2, 3, *rest]]


async def test_what_arrives_during_a_burst_joins_its_digest_best_first_never_the_cards(store, clock):
    queue(store, clock, [paper(f"2411.{n:05d}", f"Paper {n}", upvotes=n) for n in range(15)])
    adapter = Recorder()
    adapter.digest_results = [PostResult(ok=False, error="HTTP 503", retryable=True)]
    dispatcher = Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS)
    await dispatcher.dispatch()  # cards 14..5 sent; the digest (4..0) failed and waits
    assert [c.upvotes for c in adapter.cards_to(ML)] == list(range(14, 4, -1))
    # A very popular paper arrives while the burst's digest is owed: it joins the digest, at its top.
    queue(store, clock, [paper("2411.00500", "Popular", upvotes=500)])
    clock.advance(hours=1)
    await dispatcher.dispatch()
    assert len(adapter.cards_to(ML)) == CARDS
    assert [c.upvotes for c in adapter.digests[-1].cards] == [500, 4, 3, 2, 1, 0]


async def test_a_scheduled_digest_keeps_the_best_and_lists_them_best_first(store, clock):
    store.save_channel_settings(ChannelSettings(ML, mode="daily", digest_time="09:00", last_digest_at=clock()),
                                clock())
    queue(store, clock, [paper(f"2411.{n:05d}", f"Paper {n}", upvotes=(n * 7) % 30) for n in range(30)])
    adapter = Recorder()
    clock.advance(days=1)
    await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch_digests()
    (digest,) = adapter.digests
    votes = sorted(((n * 7) % 30 for n in range(30)), reverse=True)
    assert [c.upvotes for c in digest.cards] == votes[:DIGEST_MAX]
    assert digest.order == RANK_ORDER and digest.note.startswith("and 10 more papers matched")
    assert store.delivery_counts() == OutboxCounts(sent=DIGEST_MAX, overflow=10)


async def test_an_upgraded_database_keeps_the_cards_of_a_burst_under_way(tmp_path, clock):
    # Before m017 a burst's cards were the outstanding rows before its digest's first row.
    path = tmp_path / "old.db"
    old = Store(path)
    queue(old, clock, [paper(f"2411.{n:05d}", f"Paper {n}", upvotes=n) for n in range(20)])
    old.db.execute("UPDATE deliveries SET in_digest = 1 WHERE id > 10")  # the old plan: ids 1..10 are cards
    old.db.execute("UPDATE deliveries SET status = 'sent' WHERE id <= 4")  # four of them went out
    old.db.execute("ALTER TABLE deliveries DROP COLUMN card")
    old.db.execute("ALTER TABLE deliveries DROP COLUMN strength")
    old.db.execute("ALTER TABLE papers DROP COLUMN comments")
    old.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm017_ranked_bursts_and_comments'")
    old.db.conn.commit()
    old.close()
    store = Store(path)
    try:
        adapter = Recorder()
        await Dispatcher(store, {"console": adapter}, clock, cards_per_cycle=CARDS).dispatch()
        # The six cards still owed go out (best first), the digest stays the digest.
        assert [c.upvotes for c in adapter.cards_to(ML)] == [9, 8, 7, 6, 5, 4]
        assert [c.upvotes for c in adapter.digests[0].cards] == list(range(19, 9, -1))
        assert store.delivery_counts() == OutboxCounts(sent=20)
    finally:
        store.close()
