"""Evaluation of every language form, explanations, and the indexed engine against the naive loop."""

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import QueryError
from bot.matching import (
    IndexedMatcher,
    NaiveMatcher,
    PaperView,
    _shortcut,
    _shortcut_hits,
    _word_clauses,
    _word_hits,
    anchors,
    evaluate,
)
from bot.models import ChannelRef, Paper, Subscription
from bot.query import normalize_query, parse_query

from .fakes import paper

ML = ChannelRef("console", "ml")
CV = ChannelRef("console", "cv")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

PAPER = paper(
    "2410.18538",
    "SMITE: Segment Me In TimE with Diffusion-based Models",
    "We employ a pre-trained text to image diffusion model supplemented with large language models.",
    authors=("Amirhossein Alimohammadi", "Yann A. LeCun", "Émile Borel"),
    categories=("cs.CV", "cs.LG"),
    source="huggingface",
    upvotes=25,
    organization="Google DeepMind (google)",
)


def sub(sub_id, query, channel=ML):
    return Subscription(sub_id, channel, normalize_query(query), "u1", T0)


def check(query):
    return evaluate(parse_query(query), PaperView(PAPER))


@pytest.mark.parametrize(
    "query, hits",
    [
        ("diffusion", ["diffusion in title"]),  # inside the compound "Diffusion-based"
        ("DIFFUSION", ["diffusion in title"]),
        ("model", ["model in title"]),  # model ~ Models
        ("languages", ["languages in abstract"]),  # languages ~ language
        ('"large language model"', ['"large language model" in abstract']),
        ('"text to image"', ['"text to image" in abstract']),
        ("text-to-image", ['"text to image" in abstract']),
        ("segm*", ["segment in title"]),
        ("segment diffusion", ["segment in title", "diffusion in title"]),
        ("segment AND image", ["segment in title", "image in abstract"]),
        ("robots OR diffusion", ["diffusion in title"]),
        ("robots | image", ["image in abstract"]),
        ("diffusion -video", ["diffusion in title"]),
        ("diffusion NOT robots", ["diffusion in title"]),
        ("(robots OR image) segment", ["image in abstract", "segment in title"]),
        ("title:segment", ["segment in title"]),
        ("abstract:supplemented", ["supplemented in abstract"]),
        ('title:"segment me"', ['"segment me" in title']),
        ('author:"Yann LeCun"', ["author Yann A. LeCun"]),  # middle initial ignored
        ("author:lecun", ["author Yann A. LeCun"]),
        ("author:emile", None),  # a first name alone does not name the author
        ('author:"Emile Borel"', ["author Émile Borel"]),  # accents ignored
        ("cat:cs.CV", ["category cs.cv"]),
        ("cat:cs", ["category cs"]),
        ("org:google", ["org Google DeepMind (google)"]),
        ('org:"google deepmind"', ["org Google DeepMind (google)"]),
        ("upvotes>=20", ["25 upvotes"]),
        ("upvotes>25", None),
        ("upvotes=25", ["25 upvotes"]),
        ("source:hf", ["listed on Hugging Face"]),
        ("source:arxiv", None),
        ("diffusions", ["diffusions in title"]),
        ("confusion", None),
        ("title:image", None),  # image is in the abstract only
        ("abstract:segment", None),
        ('"language large"', None),  # phrases are ordered
        ("diffusion -image", None),
        ("robots OR video", None),
        ("author:lecun upvotes>=30", None),
    ],
)
def test_every_form_matches_as_documented(query, hits):
    assert check(query) == hits


def test_engine_explains_each_match_per_subscription():
    engine = IndexedMatcher([sub(1, "diffusion"), sub(2, "video diffusion", CV), sub(3, "segment upvotes>=20", CV)])
    matches = engine.match(PAPER)
    assert [(m.subscription_id, m.channel, m.terms) for m in matches] == [
        (1, ML, ("diffusion in title",)),
        (3, CV, ("segment in title", "25 upvotes")),
    ]


def test_subscriptions_are_added_and_removed_without_a_rebuild():
    engine = IndexedMatcher()
    assert engine.match(PAPER) == []
    engine.add(sub(7, "diffusion"))
    engine.add(sub(8, "diffusion", CV))  # the same query in two channels shares one entry
    assert [m.subscription_id for m in engine.match(PAPER)] == [7, 8]
    engine.remove(7)
    assert [m.subscription_id for m in engine.match(PAPER)] == [8]
    engine.remove(8)
    engine.remove(99)
    assert engine.match(PAPER) == [] and len(engine) == 0
    assert engine.is_empty()


def test_unanchorable_queries_are_always_evaluated():
    assert anchors(parse_query("upvotes>=20")) is None
    assert anchors(parse_query("upvotes>=20 -video")) is None
    assert anchors(parse_query("diffusion upvotes>=20")) == {"diffusion"}
    assert anchors(parse_query("a1 OR upvotes>=3")) is None
    engine = IndexedMatcher([sub(1, "upvotes>=20")])
    assert [m.subscription_id for m in engine.match(PAPER)] == [1]


def test_anchor_prefers_the_most_specific_term():
    assert anchors(parse_query("the diffusion")) == {"diffusion"}
    assert anchors(parse_query("(a1 OR b2) segmentation")) == {"segmentation"}
    # A phrase is anchored on one pair of consecutive words, the rarest by the counts.
    assert anchors(parse_query('"large language model"')) == {"large language"}
    counts = {"large language": 40, "language model": 3}
    assert anchors(parse_query('"large language model"'), counts) == {"language model"}
    assert anchors(parse_query('author:"Yann LeCun"')) == {"a:lecun yann"}
    assert anchors(parse_query("title:segment")) == {"t:segment"}


# ---- engine == naive, on random queries and papers ---------------------------------------

VOCAB = ["diffusion", "model", "models", "language", "large", "agent", "agents", "video", "image",
         "segment", "robot", "robotics", "vision", "text", "to", "graph", "learning", "reward"]

_words = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=12).map(" ".join)
_hyphen = st.tuples(st.sampled_from(VOCAB), st.sampled_from(VOCAB)).map("-".join)


@st.composite
def papers(draw):
    return Paper(
        id="2410.00001",
        title=draw(st.one_of(_words, _hyphen)),
        summary=draw(_words),
        authors=tuple(draw(st.lists(st.sampled_from(["Yann LeCun", "Yann A. LeCun", "Ada Lovelace", "Émile Borel"]),
                                    max_size=3))),
        categories=tuple(draw(st.lists(st.sampled_from(["cs.CV", "cs.LG", "stat.ML"]), max_size=2))),
        source=draw(st.sampled_from(["huggingface", "arxiv"])),
        upvotes=draw(st.one_of(st.none(), st.integers(0, 60))),
        organization=draw(st.sampled_from([None, "Google (google)", "Meta AI (facebook)"])),
    )


_atom = st.one_of(
    st.sampled_from(VOCAB),
    st.sampled_from(VOCAB).map(lambda w: f"title:{w}"),
    st.sampled_from(VOCAB).map(lambda w: f"abstract:{w}"),
    st.sampled_from(VOCAB).filter(lambda w: len(w) >= 3).map(lambda w: f"{w[:3]}*"),
    st.tuples(st.sampled_from(VOCAB), st.sampled_from(VOCAB)).map(lambda t: f'"{t[0]} {t[1]}"'),
    st.sampled_from(['author:"Yann LeCun"', "author:lecun", "author:borel", "cat:cs.CV", "cat:cs", "cat:stat",
                     "org:google", "source:hf", "source:arxiv", "upvotes>=10", "upvotes<5"]),
)


@st.composite
def query_texts(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        atom = draw(_atom)
        return f"-{atom}" if draw(st.integers(0, 3)) == 0 else atom
    parts = draw(st.lists(query_texts(depth=depth - 1), min_size=2, max_size=3))
    text = draw(st.sampled_from([" ", " OR "])).join(parts)
    return f"({text})"


def subscriptions_of(texts: list[str], channels: tuple[ChannelRef, ...] = (ML, CV)) -> list[Subscription]:
    """The texts that parse, as subscriptions numbered by their position (1, 2, ...), their
    channels taken in turn from `channels`."""
    subs = []
    for i, text in enumerate(texts, start=1):
        try:
            subs.append(Subscription(i, channels[(i - 1) % len(channels)], normalize_query(text), "u", T0))
        except QueryError:
            pass
    return subs


def assert_engine_agrees_with_naive_loop(texts: list[str], paper_list: list[Paper], history: list[Paper]) -> None:
    """The engine (its index anchored by `history`'s word counts) matches each paper as the
    naive loop over the same subscriptions does."""
    subs = subscriptions_of(texts)
    engine, naive = IndexedMatcher(subs, papers=history), NaiveMatcher(subs)
    for p in paper_list:
        assert engine.match(p) == naive.match(p)


@settings(max_examples=400, deadline=None)
@given(st.lists(query_texts(), min_size=1, max_size=12), st.lists(papers(), min_size=1, max_size=4))
def test_engine_and_naive_loop_agree(texts, paper_list):
    assert_engine_agrees_with_naive_loop(texts, paper_list, [])


_word_atom = st.one_of(st.sampled_from(VOCAB), st.sampled_from(VOCAB).map(lambda w: f"title:{w}"),
                      st.sampled_from(VOCAB).map(lambda w: f"abstract:{w}"))


@st.composite
def word_clause_texts(draw):
    """Words and OR groups of words, the shapes decided without walking the tree."""
    groups = draw(st.lists(st.lists(_word_atom, min_size=1, max_size=3), min_size=1, max_size=4))
    return " ".join(g[0] if len(g) == 1 else "(" + " OR ".join(g) + ")" for g in groups)


@settings(max_examples=400, deadline=None)
@given(word_clause_texts(), papers())
def test_words_and_or_groups_of_words_are_decided_as_the_tree_is(text, paper):
    node = parse_query(text)
    words = _word_clauses(node)
    assert words is not None
    view = PaperView(paper)
    assert _word_hits(words, view.title_set, view.abstract_set) == evaluate(node, view)


def test_other_shapes_are_left_to_the_tree():
    for text in ['"language model"', "diffusion -video", "diffus*", "(a1 b2) OR c3", "video cat:cs.CV",
                 "upvotes>=3 model"]:
        assert _word_clauses(parse_query(text)) is None, text


@settings(max_examples=300, deadline=None)
@given(st.lists(word_clause_texts(), min_size=1, max_size=12), st.lists(papers(), min_size=1, max_size=4),
       st.lists(papers(), max_size=4))
def test_engine_and_naive_loop_agree_on_words_and_or_groups(texts, paper_list, history):
    assert_engine_agrees_with_naive_loop(texts, paper_list, history)


_prefix_atom = st.sampled_from(VOCAB).filter(lambda w: len(w) >= 3).flatmap(
    lambda w: st.sampled_from([f"{w[:3]}*", f"{w[:4]}*", f"title:{w[:3]}*", f"abstract:{w[:3]}*", f"{w}*"]))


_scoped_phrase = st.tuples(st.sampled_from(["", "title:", "abstract:"]), st.lists(st.sampled_from(VOCAB), min_size=2,
                                                                                 max_size=3)).map(
    lambda t: f'{t[0]}"{" ".join(t[1])}"')


@st.composite
def shortcut_texts(draw):
    """A prefix alone; words (at least one) and words left out (at least one); or an AND of
    any terms, words left out and OR groups (the upvotes, prefixes, phrases... among them)."""
    shape = draw(st.integers(0, 2))
    if shape == 0:
        return draw(_prefix_atom)
    if shape == 1:
        kept = draw(st.lists(_word_atom, min_size=1, max_size=3))
        left_out = draw(st.lists(_word_atom.map(lambda w: f"-{w}"), min_size=1, max_size=2))
        return " ".join(draw(st.permutations(kept + left_out)))
    terms = draw(st.lists(st.one_of(_atom, _atom.map(lambda a: f"-{a}"), query_texts(depth=1), _scoped_phrase),
                          min_size=2, max_size=4))
    return " ".join(terms)


@settings(max_examples=400, deadline=None)
@given(shortcut_texts(), papers())
def test_shortcut_shapes_are_decided_as_the_tree_is(text, paper):
    try:
        node = parse_query(text)
    except QueryError:  # only left-out terms
        return
    shortcut = _shortcut(node)
    if shortcut is None:  # normalized into another shape (a word left out twice, a prefix of a word...)
        return
    assert shortcut is node  # nothing new kept per entry
    view = PaperView(paper)
    assert _shortcut_hits(shortcut, view) == evaluate(node, view)


def test_shortcuts_are_only_for_their_shapes():
    for text in ["diffus*", "title:diffus*", "diffusion -video", "-video diffusion title:model",
                 "a1 -b2 -c3", "(a1 OR b2) -c3", 'diffusion -"a b"', "diffus* -video", "video cat:cs.CV",
                 "upvotes>=3 model", '"language model" author:lecun']:
        assert _shortcut(parse_query(text)) is not None, text
    for text in ['"language model"', "diffusion", "diffusion model", "(a1 OR b2) c3", "(a1 b2) OR c3",
                 "cat:cs.CV", "author:lecun"]:
        assert _shortcut(parse_query(text)) is None, text


@settings(max_examples=300, deadline=None)
@given(st.lists(shortcut_texts(), min_size=1, max_size=12), st.lists(papers(), min_size=1, max_size=4),
       st.lists(papers(), max_size=4))
def test_engine_and_naive_loop_agree_on_the_shortcut_shapes(texts, paper_list, history):
    assert_engine_agrees_with_naive_loop(texts, paper_list, history)


# ---- the engine on the benchmarks' workloads, and in worker processes ----------------------

@pytest.mark.parametrize("workload, seed", [("zipf", 1), ("zipf", 2), ("real", 1), ("real", 2)])
def test_engine_equals_evaluating_every_query_on_the_benchmark_workloads(workload, seed):
    from bench.workloads import make_workload

    made = make_workload(workload, subscriptions=1500, papers=40, seed=seed, history=200)
    subs = made.subscriptions()
    engine = IndexedMatcher(subs, papers=made.history)  # anchors chosen from counts, as in the bot
    nodes = [(s, parse_query(s.query)) for s in subs]
    matched = 0
    for p in made.papers:
        view = PaperView(p)
        expected = [(s.id, s.channel, s.query, tuple(hits)) for s, node in nodes
                    if (hits := evaluate(node, view)) is not None]
        got = engine.match(p)
        assert got == expected, p.id
        matched += len(got)
    assert matched > 0  # the workload exercises the engine


def test_match_many_in_worker_processes_equals_match():
    from bench.workloads import make_workload

    made = make_workload("zipf", subscriptions=2000, papers=80, seed=4, history=100)
    engine = IndexedMatcher(made.subscriptions(), papers=made.history)
    try:
        one = [engine.match(p) for p in made.papers]
        assert engine.match_many(made.papers) == one
        assert engine.match_many(made.papers, processes=2) == one
        assert sum(map(len, one)) > 0
        first_pool = engine._pool
        assert first_pool is not None
        # A change of subscriptions forks new workers: the old ones hold the old index.
        top = max(one, key=len)[0]
        engine.remove(top.subscription_id)
        again = engine.match_many(made.papers, processes=2)
        assert engine._pool is not first_pool
        assert again == [[m for m in found if m.subscription_id != top.subscription_id] for found in one]
    finally:
        engine.close()
    assert engine._pool is None
    assert engine.match_many(made.papers[:3], processes=2) == one[:3]  # too few papers: in-process
