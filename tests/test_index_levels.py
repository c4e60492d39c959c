"""The index's second level (a query under its anchor, then under another key every match
must have): random queries are found exactly as evaluating all of them finds them, through
adds and removals, and removing every subscription leaves the index empty."""

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import QueryError
from bot.matching import IndexedMatcher, NaiveMatcher
from bot.models import ChannelRef, Paper, Subscription
from bot.query import normalize_query

from .test_matching import T0, VOCAB, papers, query_texts, shortcut_texts, subscriptions_of, word_clause_texts

ML, CV = ChannelRef("console", "ml"), ChannelRef("console", "cv")


@settings(max_examples=300, deadline=None)
@given(st.lists(query_texts(), min_size=1, max_size=14), st.lists(papers(), min_size=1, max_size=3),
       st.lists(papers(), max_size=6), st.randoms(use_true_random=False))
def test_adds_and_removals_keep_the_engine_equal_to_the_naive_loop(texts, paper_list, history, rng):
    subs = subscriptions_of(texts, (ML,))
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


def test_a_word_and_a_prefix_go_under_the_prefix_then_the_word():
    # Anchored on its word alone, `agent* planning` would be a candidate for every paper with
    # "planning"; under the prefix, then the word, only for papers with both.
    texts = ["agent* planning", "planning", "title:agent* planning upvotes>=3"]
    engine, naive = IndexedMatcher(subscriptions_of(texts, (ML,))), NaiveMatcher(subscriptions_of(texts, (ML,)))
    entry = engine._entries["agent* planning"]
    assert entry.keys == ("p:agent",) and entry.second == ("planning",)
    assert engine._entries["title:agent* planning upvotes>=3"].keys == ("p:agent",)
    papers = [Paper("2410.00001", "Agentic planning", "", upvotes=5),
              Paper("2410.00002", "Planning", "for agents", upvotes=5), Paper("2410.00003", "Planning", "")]
    for paper in papers:
        assert engine.match(paper) == naive.match(paper)
    assert [m.subscription_id for m in engine.match(papers[0])] == [1, 2, 3]
    assert [m.subscription_id for m in engine.match(papers[1])] == [1, 2]
    assert [m.subscription_id for m in engine.match(papers[2])] == [2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["diffusion", "agent* planning", '"language model" -video']), min_size=1,
                max_size=8), st.lists(papers(), min_size=1, max_size=2), st.randoms(use_true_random=False))
def test_a_query_shared_by_several_subscriptions_through_adds_and_removals(texts, paper_list, rng):
    # An entry keeps its one subscription in two slots and only more than one in a dict.
    subs = subscriptions_of(texts, (ML, ChannelRef("console", "cv")))
    engine = IndexedMatcher(subs)
    kept = list(subs)
    while kept:
        gone = kept.pop(rng.randrange(len(kept)))
        engine.remove(gone.id)
        naive = NaiveMatcher(kept)
        for p in paper_list:
            assert engine.match(p) == naive.match(p)
        for entry in engine._entries.values():
            assert (entry.sole is None) == (len(entry.subs) > 1)
    assert engine.is_empty()


# Prefixes of the papers' words often: a prefix added once words were looked up must be found.
_text = st.one_of(st.sampled_from(["diff*", "mod*", "models*", "vid*", "agent* planning", "title:diff* -model",
                                   "lang* model", "ima* upvotes>=5", "diffusion model", '"large language"']),
                  st.sampled_from(VOCAB).filter(lambda w: len(w) >= 3).map(lambda w: f"{w[:3]}*"),
                  query_texts(), shortcut_texts(), word_clause_texts())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("add"), st.integers(1, 8), _text, st.booleans()),
                          st.tuples(st.just("remove"), st.integers(1, 8))), min_size=1, max_size=20),
       st.lists(papers(), min_size=1, max_size=3), st.lists(papers(), max_size=3))
def test_adds_edits_and_removals_between_papers_keep_the_engine_equal_to_the_naive_loop(ops, paper_list, history):
    # One engine through a sequence: subscriptions added, edited (the same id, another query
    # or channel), removed, the papers matched after each change, so that what the engine
    # keeps across papers (what each word begins: `_PrefixHits`; an entry's one subscription
    # or its dict of several) must follow every change.
    engine = IndexedMatcher(papers=history)
    held: dict[int, Subscription] = {}
    for op in ops:
        if op[0] == "add":
            try:
                sub = Subscription(op[1], ML if op[3] else CV, normalize_query(op[2]), "u", T0)
            except QueryError:
                continue
            engine.add(sub)
            held[sub.id] = sub
        else:
            engine.remove(op[1])
            held.pop(op[1], None)
        naive = NaiveMatcher(list(held.values()))
        for p in paper_list:
            assert engine.match(p) == naive.match(p)
    assert engine.ids() == set(held)


def test_a_second_key_added_under_a_prefix_a_word_already_met_is_found():
    # What each word begins is kept across papers, with all the second keys of its levels
    # (a paper offering none of them skips them); a key added under a prefix after a word
    # was met must still be found.
    engine = IndexedMatcher(subscriptions_of(["agent* planning"], (ML,)))
    agents_learning = Paper("2410.00001", "Agents learning", "")
    assert engine.match(agents_learning) == []  # "agents" met: its level holds planning only
    engine.add(Subscription(2, ML, normalize_query("agent* learning"), "u", T0))
    assert engine._entries["agent* learning"].keys == ("p:agent",)
    assert [m.subscription_id for m in engine.match(agents_learning)] == [2]
    engine.remove(2)
    assert engine.match(agents_learning) == []
