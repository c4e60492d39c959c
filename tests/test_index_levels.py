"""The index's second level (a query under its anchor, then under another key every match
must have): random queries are found exactly as evaluating all of them finds them, through
adds and removals, and removing every subscription leaves the index empty."""

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import QueryError
from bot.matching import IndexedMatcher, NaiveMatcher
from bot.models import ChannelRef, Subscription
from bot.query import normalize_query

from .test_matching import papers, query_texts

ML = ChannelRef("console", "ml")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@settings(max_examples=300, deadline=None)
@given(st.lists(query_texts(), min_size=1, max_size=14), st.lists(papers(), min_size=1, max_size=3),
       st.lists(papers(), max_size=6), st.randoms(use_true_random=False))
def test_adds_and_removals_keep_the_engine_equal_to_the_naive_loop(texts, paper_list, history, rng):
    subs = []
    for i, text in enumerate(texts, start=1):
        try:
            subs.append(Subscription(i, ML, normalize_query(text), "u", T0))
        except QueryError:
            pass
    # A history makes counts, and so other anchors and second keys, than none would.
    engine = IndexedMatcher(subs, papers=history)
    gone = {s.id for s in subs if rng.random() < 0.4}
    for sub_id in gone:
        engine.remove(sub_id)
    kept = [s for s in subs if s.id not in gone]
    naive = NaiveMatcher(kept)
    for p in paper_list:
        assert engine.match(p) == naive.match(p)
    for s in kept:
        engine.remove(s.id)
    assert engine.is_empty() and len(engine) == 0
    assert not (engine._pairs or engine._prefix_pairs or engine._keys or engine._prefixes or engine._always)
