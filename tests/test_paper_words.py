"""preview's word index (storage/paper_words.py): a pre-filter only, so what preview finds
through it must equal the evaluator run over every stored paper of the window."""

import asyncio
import random
from datetime import datetime, timedelta, timezone

import pytest

from bot.errors import QueryError
from bot.matching import PaperView, evaluate
from bot.query import parse_query, raw_words, render, stem
from storage import Store, paper_words

from .fakes import paper

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
SINCE = NOW - timedelta(days=30)

# Words whose plurals, stems and foldings are easy to get wrong, and some plain ones.
WORDS = ["bus", "buses", "query", "queries", "box", "boxes", "match", "matches", "analysis", "analyses",
         "model", "models", "diffusion", "Diffusion-based", "class", "classes", "status", "lens", "lenses",
         "series", "study", "studies", "data", "robot", "robots", "Émile", "naïve", "ﬁne-tuning", "ＧＰＴ",
         "GPT-4", "language", "large", "video", "world", "agent", "agents", "policy", "policies", "x", "3D",
         "learn", "learning", "learned", "denoise", "denoising", "graph", "graphs", "c++", "A/B", "e.g."]
NAMES = ["Yann LeCun", "Yann A. LeCun", "Wei Wang", "Wang Wei", "Émile Zola", "Li Na", "Ada Lovelace"]
CATEGORIES = ["cs.CL", "cs.LG", "cs.RO", "stat.ML", "hep-th", "math.OC", "eess.IV"]
TERMS = ["bus", "buses", "query", "queries", "box", "match", "analysis", "analyses", "model", "diffusion",
         '"diffusion based"', "diffusion-based", "class", "status", "lens", "series", "study", "studies",
         "emile", "naive", "fine", "gpt", "gpt-4", '"large language model"', '"world model"', "robot*", "mod*",
         "stud*", "que*", "bus*", "analy*", "lens*", "denois*", "polic*", "agents", "3d", "x", "title:model",
         "abstract:robots", 'title:"world model"', "title:diff*", "author:LeCun", 'author:"Yann LeCun"',
         'author:"Wei Wang"', "author:Zola", "cat:cs", "cat:cs.CL", "cat:hep-th", "cat:stat", "upvotes>=50",
         "upvotes<10", "upvotes=7", "source:arxiv", "source:huggingface", "org:google", 'org:"meta ai"', "org:meta"]


def random_paper(rng: random.Random, i: int) -> tuple:
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    made = paper(
        f"2411.{i:05d}", text(rng.randint(2, 8)).capitalize(), text(rng.randint(5, 30)) + ".",
        authors=tuple(rng.sample(NAMES, rng.randint(0, 3))),
        categories=tuple(rng.sample(CATEGORIES, rng.randint(0, 2))),
        upvotes=rng.choice([None, 0, 7, 9, 10, 49, 50, 200]),
        organization=rng.choice([None, "Google", "Meta AI", "Google DeepMind", "ＧＯＯＧＬＥ", "Méta AI"]),
        source=rng.choice(["arxiv", "huggingface"]),
        is_update=rng.random() < 0.1,
    )
    first_seen = NOW - timedelta(days=rng.choice([1, 5, 29, 31, 60]), minutes=i)
    return made, first_seen, rng.random() < 0.9


def random_query(rng: random.Random, depth: int = 0) -> str:
    shape = rng.random()
    if depth > 2 or shape < 0.35:
        return rng.choice(TERMS)
    if shape < 0.7:
        return " ".join(random_query(rng, depth + 1) for _ in range(rng.randint(2, 3)))
    if shape < 0.85:
        return "(" + " OR ".join(random_query(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"
    return f"{random_query(rng, depth + 1)} -{random_query(rng, depth + 1)}"


def stocked(tmp_path, count: int = 400, seed: int = 3) -> Store:
    rng = random.Random(seed)
    store = Store(tmp_path / "bot.db")
    for i in range(count):
        made, first_seen, listed = random_paper(rng, i)
        store.add_papers([made], first_seen, listed=listed)
    return store


def brute_force(store: Store, node: tuple) -> list[str]:
    """The evaluator over every listed paper of the window, newest first."""
    window = [p for p in store.papers_listed_since(SINCE, 10**9) if not p.is_update]
    return [p.id for p in window if evaluate(node, PaperView(p)) is not None]


def through_index(store: Store, node: tuple) -> tuple[list[str], int]:
    candidates = store.preview_candidates(render(node), SINCE)
    return [p.id for p in candidates.papers if evaluate(node, PaperView(p)) is not None], len(candidates.papers)


def test_preview_through_the_index_equals_the_evaluator_over_everything(tmp_path):
    store = stocked(tmp_path)
    rng = random.Random(7)
    window = len([p for p in store.papers_listed_since(SINCE, 10**9) if not p.is_update])
    checked = narrowed = matched = exact = 0
    queries = [*TERMS, *(random_query(rng) for _ in range(600))]
    for text in queries:
        try:
            node = parse_query(text)
        except QueryError:
            continue
        found, candidates = through_index(store, node)
        expected = brute_force(store, node)
        assert found == expected, text
        newest = store.preview_candidates(render(node), SINCE, limit=3)
        if newest.exact:  # the store decided alone: it must agree with the evaluator
            assert (newest.count, [p.id for p in newest.papers]) == (len(expected), expected[:3]), text
            exact += 1
        checked += 1
        narrowed += candidates < window
        matched += bool(found)
    store.close()
    assert checked > 500 and matched > 200 and checked * 0.2 < exact < checked * 0.9
    assert narrowed > checked * 0.6  # the index does narrow, for most queries


def test_the_index_is_exact_for_words_phrases_and_categories(tmp_path):
    store = stocked(tmp_path)
    for text in ["buses", "queries", '"large language model"', "cat:cs", "cat:hep-th", "naive -fine",
                 "(model OR video) -title:robots", "fine gpt", "model upvotes>=50 source:huggingface"]:
        node = parse_query(text)
        candidates = store.preview_candidates(render(node), SINCE)
        assert candidates.exact, text
        assert [p.id for p in candidates.papers] == brute_force(store, node), text  # nothing else read
    for text in ["robot*", "author:LeCun", "org:google diffusion", "upvotes>=50 -video", "model -author:zola"]:
        assert not store.preview_candidates(text, SINCE, limit=3).exact, text
    store.close()


def test_a_prefix_reaches_every_stem_its_words_have():
    # The index holds stems; a prefix is compared with unstemmed words.
    letters = "abcdehilosuxyz"
    rng = random.Random(5)
    for _ in range(20_000):
        word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 9)))
        word += rng.choice(["", "s", "es", "ies", "ches", "shes", "ses", "xes", "ss", "us", "is"])
        for size in range(3, len(word) + 1):
            p = word[:size]
            node = ("prefix", "any", p)
            expr = paper_words._fts(node)
            assert expr is not None
            s = stem(word)
            assert s.startswith(p) or f'"{s}"' in expr.text, (word, p)


def test_stored_counts_the_whole_window_without_a_cap(tmp_path):
    store = stocked(tmp_path, count=200)
    listed = store.papers_listed_since(SINCE, 10**9)
    assert store.preview_candidates("model", SINCE).stored == len(listed) > 20
    store.close()


def test_papers_not_indexed_yet_are_still_found(tmp_path, monkeypatch):
    store = stocked(tmp_path, count=100)
    store.index_paper_words()
    late = paper("2411.99999", "A late buses paper", "Nothing else.")
    store.add_papers([late], NOW)
    monkeypatch.setattr(paper_words, "index_new", lambda db, batch=0: 0)  # as when the lock was busy
    found = store.preview_candidates("bus", SINCE).papers
    assert found[0].id == "2411.99999"
    monkeypatch.undo()
    assert store.index_paper_words() == 1
    assert store.preview_candidates("bus", SINCE).papers[0].id == "2411.99999"
    store.close()


def test_preview_reads_from_a_worker_thread_with_its_own_connection(tmp_path):
    store = stocked(tmp_path, count=100)
    node = parse_query("diffusion -video")

    async def off_loop() -> list[str]:
        candidates = await asyncio.to_thread(store.preview_candidates, render(node), SINCE)
        return [p.id for p in candidates.papers if evaluate(node, PaperView(p)) is not None]

    assert store.reads_off_loop()
    assert asyncio.run(off_loop()) == brute_force(store, node)
    found = asyncio.run(asyncio.to_thread(store.search_papers, ["diffusion"], 3))
    assert found and all("diffusion" in raw_words(p.title + " " + p.summary) for p in found)
    store.close()


def test_an_in_memory_store_reads_on_its_own_thread():
    store = Store(":memory:")
    store.add_papers([paper("2411.00001", "World models", "Robots.")], NOW)
    assert not store.reads_off_loop()
    assert [p.id for p in store.preview_candidates("world", SINCE).papers] == ["2411.00001"]
    store.close()


@pytest.mark.parametrize("text", ["upvotes>=50", "source:huggingface", "org:google"])
def test_queries_without_words_scan_the_window(tmp_path, text):
    store = stocked(tmp_path, count=150)
    node = parse_query(text)
    assert paper_words.narrowing(node).match is None
    assert through_index(store, node)[0] == brute_force(store, node)
    store.close()
