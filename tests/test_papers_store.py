"""The papers area of the Store, directly, on both backends: what add_papers merges, the
follow-ups it queues for posted cards (otherwise tested only through polls and the
adapters, tests/test_followups.py), lookups that are listed later, late categories and
organizations, and the simple reads."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from bot.models import ChannelRef
from storage import Store
from storage.db import iso

from .fakes import paper

pytestmark = pytest.mark.backends

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
SINCE = T0 - timedelta(days=30)
PAPER_ID = "2611.00042"
GITHUB = "https://github.com/acme/diffusion-x"


def post_card(store, channel: str, message_id: str | None, sent_at: datetime, *, status: str = "sent",
              in_digest: bool = False, paper_id: str = PAPER_ID) -> None:
    """A delivery row as the outbox leaves it once its card is posted (or being sent)."""
    sqlite = isinstance(store, Store)
    mark = "?" if sqlite else "%s"
    stamp = iso if sqlite else (lambda moment: moment)
    with store.transaction():
        store.db.execute(
            f"""INSERT INTO deliveries (paper_id, channel, matched, status, next_attempt_at, created_at, sent_at,
                                        message_id, in_digest)
                VALUES ({", ".join([mark] * 9)})""",
            [paper_id, channel, "[]", status, stamp(sent_at), stamp(sent_at),
             stamp(sent_at) if status == "sent" else None, message_id, int(in_digest) if sqlite else in_digest])


def followups(store) -> list[tuple]:
    rows = store.db.execute("""SELECT d.channel, f.kind, f.value, f.status FROM followups f
                                 JOIN deliveries d ON d.id = f.delivery_id ORDER BY d.channel, f.kind, f.value""")
    return [tuple(row) for row in rows.fetchall()]


def test_add_papers_queues_a_followup_per_news_for_each_card_posted_alone_and_recently(store):
    store.add_papers([paper(PAPER_ID, upvotes=30, version=1), paper("2611.00043")], T0)
    post_card(store, "console:alone", "m1", T0)
    post_card(store, "console:sending", None, T0, status="sending")  # its reply waits for the card
    post_card(store, "console:digest", "m2", T0, in_digest=True)  # a digest's: which paper would it be about?
    post_card(store, "console:shared", "m3", T0)  # one message, two papers
    post_card(store, "console:shared", "m3", T0, paper_id="2611.00043")
    post_card(store, "console:old", "m4", T0 - timedelta(days=61))  # a thread nobody looks at any more
    post_card(store, "console:failed", None, T0, status="failed")
    if isinstance(store, Store):
        store.set_followups(ChannelRef("console", "off"), False, T0)
    else:
        store.db.execute("INSERT INTO channel_followups (channel, enabled, updated_at) VALUES (%s, false, %s)",
                         ["console:off", T0])
    post_card(store, "console:off", "m5", T0)

    later = T0 + timedelta(hours=2)
    assert store.add_papers([paper(PAPER_ID, source="huggingface", upvotes=120, github=GITHUB)], later) == []
    expected = [(channel, kind, value, status) for channel in ("console:alone", "console:sending")
                for kind, value, status in (("code", 0, "pending"), ("upvotes", 50, "skipped"),
                                            ("upvotes", 100, "pending"))]
    assert followups(store) == expected
    # The same listing again: no news, nothing twice.
    store.add_papers([paper(PAPER_ID, source="huggingface", upvotes=120, github=GITHUB)], later)
    assert followups(store) == expected
    # A new arXiv version and 200 upvotes, in one batch that lists the paper twice.
    store.add_papers([paper(PAPER_ID, version=2, is_update=True),
                      paper(PAPER_ID, source="huggingface", upvotes=250)], later)
    assert [row for row in followups(store) if row[0] == "console:alone"] == [
        ("console:alone", "code", 0, "pending"), ("console:alone", "upvotes", 50, "skipped"),
        ("console:alone", "upvotes", 100, "pending"), ("console:alone", "upvotes", 200, "pending"),
        ("console:alone", "version", 2, "pending")]
    stored = store.get_paper(PAPER_ID)
    assert (stored.version, stored.upvotes, stored.github, stored.source) == (2, 250, GITHUB, "arxiv")


def test_a_batch_that_lists_a_paper_twice_stores_it_once_and_merges_both(store):
    arxiv = paper("2611.00001", "From arXiv", "Abstract.", categories=("cs.LG",), version=1)
    hf = paper("2611.00001", "From HF", "Other.", source="huggingface", upvotes=5, organization="Acme Labs",
               comments=2)
    assert store.add_papers([arxiv, hf, paper("2611.00002")], T0) == [arxiv, paper("2611.00002")]
    stored = store.get_paper("2611.00001")
    assert (stored.title, stored.summary, stored.categories, stored.version) == \
        ("From arXiv", "Abstract.", ("cs.LG",), 1)
    assert (stored.upvotes, stored.organization, stored.comments, stored.source) == (5, "Acme Labs", 2, "arxiv")
    assert store.count_papers() == 2
    assert [p.id for p in store.preview_candidates('org:"acme labs"', SINCE).papers] == ["2611.00001"]


def test_a_long_batch_of_new_and_known_papers_is_stored_in_its_order_and_searchable(store):
    # SQLite inserts a batch's new rows a few hundred a statement (storage/papers.py,
    # INSERT_ROWS): known papers, a paper listed twice and more rows than one statement
    # holds, mixed, come out as one by one.
    known = [paper(f"2611.{n:05d}", f"Known {n}", "Old.") for n in range(3)]
    store.add_papers(known, T0 - timedelta(days=1))
    listing = [paper(f"2612.{n:05d}", f"Paper {n}", f"Abstract word{n} here.") for n in range(450)]
    listing.insert(7, paper("2611.00001", "Known 1", "Old.", source="huggingface", upvotes=12))
    listing.insert(300, paper("2612.00010", "Paper 10", "Abstract word10 here.", source="huggingface", upvotes=3))
    listing.insert(420, paper("2611.00002", "Known 2", "Old.", upvotes=4))
    new = store.add_papers(listing, T0)
    assert new == [p for p in listing if p.id.startswith("2612.") and p.upvotes is None] and len(new) == 450
    assert store.count_papers() == 453
    enriched = store.get_paper("2611.00001")
    assert (enriched.upvotes, enriched.title, enriched.source) == (12, "Known 1", "arxiv")
    again = store.get_paper("2612.00010")
    assert (again.upvotes, again.title, again.source) == (3, "Paper 10", "arxiv")
    snapshot = {s.id: s for s in store.paper_snapshot(["2611.00002", "2612.00449"])}
    assert (snapshot["2611.00002"].upvotes, snapshot["2611.00002"].first_seen) == (4, T0 - timedelta(days=1))
    assert snapshot["2612.00449"].first_seen == T0
    for n in (0, 199, 200, 449):
        assert [p.id for p in store.search_papers([f"word{n}"], 5)] == [f"2612.{n:05d}"]
    if isinstance(store, Store):  # rowids in the listing's order (the word index catches up by rowid)
        order = [row[0] for row in store.db.execute("SELECT id FROM papers ORDER BY rowid").fetchall()]
        assert order == [p.id for p in known] + [p.id for p in new]


def test_a_paper_stored_by_a_lookup_is_new_when_a_listing_brings_it(store):
    lookup = paper("2611.00001", "Looked up", "Robots.")
    assert store.add_papers([lookup], T0 - timedelta(days=3), listed=False) == []
    assert store.get_paper("2611.00001") == lookup
    assert store.papers_listed_since(SINCE, 10) == [] and store.paper_snapshot(["2611.00001"]) == []
    assert store.preview_candidates("robots", SINCE).stored == 0
    assert store.add_papers([lookup], T0 - timedelta(days=2), listed=False) == []  # looked up again: still not
    assert store.add_papers([lookup], T0) == [lookup]  # listed now: new, first seen now
    assert store.add_papers([lookup], T0 + timedelta(hours=1)) == []
    assert [p.id for p in store.papers_listed_since(T0, 10)] == ["2611.00001"]
    (snapshot,) = store.paper_snapshot(["2611.00001", "2611.99999"])
    assert (snapshot.id, snapshot.first_seen) == ("2611.00001", T0)
    assert store.preview_candidates("robots", T0).count == 1


def test_categories_and_an_organization_a_later_listing_fills_in_are_found_by_preview(store):
    hf = paper("2611.00001", "World models", "Robots.", source="huggingface", upvotes=3)
    store.add_papers([hf], T0)
    store.index_paper_words()
    assert store.preview_candidates("cat:cs.ro", SINCE, limit=5).count == 0
    store.add_papers([paper("2611.00001", "World models", "Robots.", categories=("cs.RO",))], T0)  # arXiv's
    store.add_papers([paper("2611.00001", "World models", "Robots.", source="huggingface",
                            organization="Google DeepMind")], T0)
    store.index_paper_words()
    assert store.get_paper("2611.00001").categories == ("cs.RO",)
    for query in ("cat:cs.ro", "cat:cs", 'org:"google deepmind"', "world -cat:math"):
        found = store.preview_candidates(query, SINCE)
        assert [p.id for p in found.papers] == ["2611.00001"], query
    assert [p.id for p in store.preview_candidates("world -cat:cs", SINCE).papers] == []
    if isinstance(store, Store):  # the row was indexed again, not twice
        for match in ('title : "world"', 'cats : "cs.ro"'):
            assert len(store.db.execute("SELECT rowid FROM paper_words WHERE paper_words MATCH ?",
                                        [match]).fetchall()) == 1


def test_listed_since_trending_recent_and_snapshot_read_what_was_stored(store):
    store.add_papers([paper("2611.00002", upvotes=10, listed_on=date(2026, 11, 20)),
                      paper("2611.00001", upvotes=10, listed_on=date(2026, 11, 26)),
                      paper("2611.00003", upvotes=None, listed_on=date(2026, 11, 26))], T0)
    store.add_papers([paper("2611.00004", upvotes=40, listed_on=date(2026, 11, 27),
                            published=datetime(2026, 11, 25, 18, 30, 15, 999, tzinfo=timezone.utc))],
                     T0 + timedelta(minutes=5))
    store.add_papers([paper("2611.00005", upvotes=99, listed_on=date(2026, 11, 27))],
                     T0 + timedelta(minutes=9), listed=False)
    assert [p.id for p in store.trending_papers(date(2026, 11, 21), 10)] == ["2611.00005", "2611.00004",
                                                                             "2611.00001"]
    assert [p.id for p in store.recent_papers(3)] == ["2611.00005", "2611.00004", "2611.00001"]
    assert [p.id for p in store.papers_listed_since(T0, 10)] == ["2611.00004", "2611.00001", "2611.00002",
                                                                 "2611.00003"]
    assert [p.id for p in store.papers_listed_since(T0 + timedelta(minutes=1), 10)] == ["2611.00004"]
    assert store.get_paper("2611.00004").published == datetime(2026, 11, 25, 18, 30, 15, tzinfo=timezone.utc)
    assert store.get_paper("2611.00004").listed_on == date(2026, 11, 27)
    snapshots = sorted(store.paper_snapshot(["2611.00004", "2611.00005", "2611.00001"]), key=lambda s: s.id)
    assert [(s.id, s.upvotes, s.first_seen) for s in snapshots] == [
        ("2611.00001", 10, T0), ("2611.00004", 40, T0 + timedelta(minutes=5))]
    assert store.count_papers() == 5
    assert store.paper_snapshot([]) == [] and store.add_papers([], T0) == []


def test_search_finds_stemmed_words_in_title_abstract_and_authors_and_never_reads_syntax(store):
    store.add_papers([paper("2611.00001", "Diffusion models", "We denoise images.", authors=("Ada Lovelace",)),
                      paper("2611.00002", "Agents", "Language agents plan.", authors=("Alan Turing",))], T0)
    assert [p.id for p in store.search_papers(["model"], 5)] == ["2611.00001"]
    assert [p.id for p in store.search_papers(["lovelace"], 5)] == ["2611.00001"]
    assert [p.id for p in store.search_papers(["agent", "diffusion"], 5)] != []  # no paper has both: any
    for hostile in ['"', "a & | !", "'); DROP TABLE papers; --", "NEAR(", "*", ":*"]:
        store.search_papers([hostile, "agents"], 5)  # plain text, never query syntax: no error
    assert store.count_papers() == 2


def test_postgresql_papers_past_the_limits_of_tsvector_are_always_candidates(pg_url):
    from storage.postgres import PgStore
    from storage.postgres.paper_words import MAX_POSITIONS

    store = PgStore(pg_url)
    huge = paper("2611.00001", "Model " * (MAX_POSITIONS + 1), "Robots.")  # a word more often than tsvector keeps
    store.add_papers([huge, paper("2611.00002", "Robots", "Robots and models.")], T0)
    assert store.db.scalar("SELECT words_partial FROM papers WHERE id = '2611.00001'") is True
    found = store.preview_candidates('"model model"', SINCE, limit=5)
    assert [p.id for p in found.papers] == ["2611.00001"] and not found.exact
    found = store.preview_candidates("video", SINCE, limit=5)  # a candidate even so: read as it is
    assert [p.id for p in found.papers] == ["2611.00001"] and not found.exact
    assert store.preview_candidates("upvotes>=5", SINCE, limit=5).papers == []  # no words read: exact
    store.add_papers([paper("2611.00003", "Robots", "x" * 3000)], T0)  # a word longer than a lexeme may be
    assert store.db.scalar("SELECT words_partial FROM papers WHERE id = '2611.00003'") is True
    assert [p.id for p in store.preview_candidates("robots", SINCE).papers] == ["2611.00001", "2611.00002",
                                                                                "2611.00003"]
    store.close()
